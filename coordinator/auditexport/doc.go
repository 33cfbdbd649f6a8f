// Package auditexport streams the coordinator's audit chain to outside
// systems (a SIEM): syslog (RFC 5424 over TLS, RFC 5425 framing) and
// OpenTelemetry logs over OTLP/HTTP.
//
// Each configured Destination has its own goroutine and its own cursor:
// the sequence number and hash of the last record the destination
// acknowledged, kept in the store's Meta bucket under CursorKey. The
// goroutine reads the stored chain after its cursor, in order, sends a
// batch, and only once the destination has taken the whole batch does it
// write the cursor forward. A restart resumes from the stored cursor, so
// every event reaches every destination at least once and in order; a
// batch in flight when the coordinator stopped or the destination failed
// is sent again (duplicates only around a failure or a restart).
//
// The exporter is not on the append path: it reads what the audit writer
// and the handlers stored, so a destination that is down or slow never
// holds up the coordinator. A failing destination is retried with
// exponential back-off up to a cap, and catches up from its cursor when
// it answers again. Its lag (events and seconds) is a metric.
//
// Retention is held back for configured destinations: Hold gives the
// lowest cursor, and the coordinator prunes no record above it. Records
// a destination never took can still disappear when it was not configured
// while retention ran, or when the store was restored from a backup that
// ends before its cursor; the exporter then records the gap as an audit
// event (proto.AuditExportGap) and goes on after it, so no loss is
// silent.
package auditexport
