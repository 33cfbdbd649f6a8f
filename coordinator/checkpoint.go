package coordinator

import (
	"context"
	"fmt"
	"net/http"

	"github.com/clustral/clustral/coordinator/auditlog"
	"github.com/clustral/clustral/coordinator/store"
	"github.com/clustral/clustral/proto"
)

// The coordinator signs a checkpoint of its audit log (see package
// auditlog) at start, every Config.AuditCheckpointInterval while the log
// grows, and when it stops; an administrator exports one on demand (POST
// /api/v1/audit/checkpoints, clustral audit checkpoint) to keep outside
// the coordinator. The key is Config.auditKeyPath, created at first
// start.

// checkpointAudit signs a checkpoint of the head unless the newest one
// already names it, or the log is empty.
func (s *Server) checkpointAudit() error {
	s.ckpt.Lock()
	defer s.ckpt.Unlock()
	var signed uint64
	err := s.store.Update(func(tx store.Tx) error {
		head, err := auditlog.Head(tx)
		if err != nil || head.Seq == 0 || head.Seq == s.ckpt.last {
			return err
		}
		c, err := auditlog.SignCheckpoint(tx, s.auditKey, s.now())
		signed = c.Seq
		return err
	})
	if err != nil {
		return fmt.Errorf("sign audit checkpoint: %w", err)
	}
	if signed != 0 {
		s.ckpt.last = signed
	}
	return nil
}

// auditSigner signs a checkpoint every AuditCheckpointInterval while the
// log grows, until ctx ends (singleton work).
func (s *Server) auditSigner(ctx context.Context) {
	s.every(ctx, s.cfg.AuditCheckpointInterval, func() {
		if err := s.checkpointAudit(); err != nil {
			s.log.Error("audit checkpoint", "err", err)
		}
	})
}

// handleLatestCheckpoint serves GET /api/v1/audit/checkpoints/latest:
// the newest checkpoint the coordinator signed, as stored, without
// signing one or recording the read (the console shows it beside the
// log); 404 while there is none.
func (s *Server) handleLatestCheckpoint(w http.ResponseWriter, r *http.Request, _ principal) {
	var c proto.AuditCheckpoint
	err := s.store.View(func(tx store.Tx) error {
		var err error
		c, err = auditlog.LastCheckpoint(tx)
		return err
	})
	if err != nil {
		s.writeInternal(w, "read the latest audit checkpoint", err, "")
		return
	}
	if c.Seq == 0 {
		writeProblem(w, http.StatusNotFound, proto.CodeNotFound, "no signed audit checkpoint yet",
			"the coordinator signs one as soon as the log holds a record; export one with clustral audit checkpoint")
		return
	}
	writeJSON(w, http.StatusOK, c)
}

// handleAuditCheckpoint serves POST /api/v1/audit/checkpoints: it records
// the export (AL001I) and signs a checkpoint that covers that record.
func (s *Server) handleAuditCheckpoint(w http.ResponseWriter, r *http.Request, p principal) {
	s.ckpt.Lock()
	defer s.ckpt.Unlock()
	var c proto.AuditCheckpoint
	err := s.store.Update(func(tx store.Tx) error {
		if _, err := auditlog.Append(tx, proto.AuditEvent{Code: proto.AuditCheckpointExport, Time: s.now(), Actor: p.user.Login,
			Metadata: map[string]string{"remote": remoteHost(r)}}); err != nil {
			return err
		}
		var err error
		c, err = auditlog.SignCheckpoint(tx, s.auditKey, s.now())
		return err
	})
	if err != nil {
		s.writeInternal(w, "sign audit checkpoint", err, "")
		return
	}
	s.ckpt.last = c.Seq
	writeJSON(w, http.StatusOK, c)
}
