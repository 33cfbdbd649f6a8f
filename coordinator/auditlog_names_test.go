package coordinator

import (
	"github.com/clustral/clustral/coordinator/auditlog"
	"github.com/clustral/clustral/coordinator/store"
)

// The tests of this package drive the audit chain through package
// auditlog under the names it had when it was part of this package.

type (
	auditMark          = auditlog.Mark
	auditFilter        = auditlog.Filter
	AuditVerifyOptions = auditlog.VerifyOptions
)

const (
	metaAuditHead = auditlog.MetaHead
	maxAuditSkew  = auditlog.MaxSkew
)

var (
	appendAudit      = auditlog.Append
	auditKey         = auditlog.Key
	queryAudit       = auditlog.Query
	parseAuditFilter = auditlog.ParseFilter
	pruneAudit       = auditlog.Prune
	signCheckpoint   = auditlog.SignCheckpoint
	loadAuditKey     = auditlog.LoadKey
	VerifyAudit      = auditlog.Verify
	VerifyAuditDir   = auditlog.VerifyDir
)

// getMark reads the Mark stored in Meta under key.
func getMark(tx store.Tx, key string) (auditMark, error) {
	if key == metaAuditHead {
		return auditlog.Head(tx)
	}
	_, anchor, err := auditlog.Marks(tx)
	return anchor, err
}
