package coordinator

import (
	"io"
	"net/http"
	"time"

	"github.com/clustral/clustral/coordinator/store"
	"github.com/clustral/clustral/pkg/version"
)

// What monitoring and operators read: /healthz, /readyz, /metrics, the
// coordinator's info, and the store backup.

// OpsHandler serves what monitoring reads: GET /metrics, /healthz and
// /readyz. ListenAndServe serves it on Config.MetricsListen when that is set.
func (s *Server) OpsHandler() http.Handler {
	mux := http.NewServeMux()
	s.opsRoutes(mux, true)
	return mux
}

// opsRoutes adds /healthz and /readyz to mux, and /metrics with metrics.
func (s *Server) opsRoutes(mux *http.ServeMux, metrics bool) {
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { w.Write([]byte("ok\n")) })
	mux.HandleFunc("GET /readyz", s.handleReady)
	if metrics {
		mux.Handle("GET /metrics", s.metrics.handler())
	}
}

func (s *Server) handleReady(w http.ResponseWriter, _ *http.Request) {
	if err := s.store.View(func(tx store.Tx) error { _, err := tx.GetRaw(store.Meta, metaCA); return err }); err != nil {
		s.log.Warn("readyz: store unavailable", "err", err)
		http.Error(w, "store unavailable", http.StatusServiceUnavailable)
		return
	}
	w.Write([]byte("ok\n"))
}

// Info is served at GET /api/v1/info, unauthenticated.
type infoResponse struct {
	Version    string    `json:"version"`
	MeshDomain string    `json:"mesh_domain"`
	Issuer     string    `json:"issuer,omitempty"`
	Time       time.Time `json:"time"`
}

func (s *Server) handleInfo(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, infoResponse{Version: s.version(), MeshDomain: s.cfg.MeshDomain, Issuer: s.cfg.OIDC.Issuer, Time: s.now().UTC()})
}

// handleBackup streams a consistent snapshot of the store: the bbolt file
// as of one moment, while writes go on. A failure after the first byte
// aborts the response, so the client sees a broken transfer rather than a
// short file.
func (s *Server) handleBackup(w http.ResponseWriter, r *http.Request, p principal) {
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Content-Disposition", `attachment; filename="coordinator.db"`)
	w.Header().Set("Cache-Control", "no-store")
	start := time.Now()
	// A large store on a slow link takes longer than the write timeout:
	// each chunk gets its own deadline instead.
	n, err := s.store.BackupTo(&deadlineWriter{w: w, extend: s.longLived(w)})
	if err != nil {
		s.log.Error("backup failed", "actor", p.user.Login, "bytes", n, "err", err)
		if n == 0 {
			s.writeInternal(w, "backup", err, "")
			return
		}
		panic(http.ErrAbortHandler)
	}
	s.log.Info("backup", "actor", p.user.Login, "bytes", n, "duration", time.Since(start))
}

// deadlineWriter calls extend before each write to w.
type deadlineWriter struct {
	w      io.Writer
	extend func()
}

func (d *deadlineWriter) Write(p []byte) (int, error) {
	d.extend()
	return d.w.Write(p)
}

// version is the version the coordinator reports: Config.Version, or
// this binary's.
func (s *Server) version() string {
	if s.cfg.Version != "" {
		return s.cfg.Version
	}
	return version.Get().Version
}
