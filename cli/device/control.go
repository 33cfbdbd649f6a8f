package device

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"github.com/clustral/clustral/proto"
)

// AgentView is one agent in the status socket's GET /status answer.
type AgentView struct {
	Cluster       string    `json:"cluster"`
	NodeID        string    `json:"node_id"`
	Address       string    `json:"address"`
	Online        bool      `json:"online"`
	LastHandshake time.Time `json:"last_handshake,omitzero"`
	Path          string    `json:"path,omitempty"`
	// LatencyMS is the last probe round trip on Path, 0 if none.
	LatencyMS float64 `json:"latency_ms,omitempty"`
}

// ContextsResponse answers POST and DELETE /contexts/{cluster} on the
// status socket.
type ContextsResponse struct {
	Contexts []string `json:"contexts"`
	Error    string   `json:"error,omitempty"`
}

// contextRequest asks wait to add or remove one cluster's context.
type contextRequest struct {
	cluster string
	add     bool
	reply   chan contextReply
}

type contextReply struct {
	contexts []string
	err      error
}

// StatusClient returns an HTTP client, with timeout, for the status
// socket of the device running for the profile directory dir. The URL's
// host is ignored: every request goes to the socket.
func StatusClient(dir string, timeout time.Duration) *http.Client {
	path := filepath.Join(dir, SocketFile)
	return &http.Client{Timeout: timeout, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		},
	}}
}

// serveControl serves the local status API of the device on a unix
// socket in the profile directory (SocketFile, mode 0600):
//
//   - GET /status answers the state wait last published and the agents in
//     the map;
//   - POST and DELETE /contexts/{cluster} add and remove one cluster's
//     kubeconfig context (clustral kube login/logout); they are handed to
//     wait, so contexts have one writer.
//
// stop closes it.
func (d *device) serveControl() error {
	d.ctxReqs = make(chan contextRequest)
	path := filepath.Join(d.cfg.Dir, SocketFile)
	os.Remove(path)
	l, err := net.Listen("unix", path)
	if err != nil {
		return fmt.Errorf("control socket: %w", err)
	}
	os.Chmod(path, 0o600)
	mux := http.NewServeMux()
	mux.HandleFunc("GET /status", func(w http.ResponseWriter, r *http.Request) {
		resp := struct {
			State  *State      `json:"state"`
			Agents []AgentView `json:"agents"`
		}{State: d.published.Load()}
		for _, p := range d.mesh.Node.Peers() {
			if p.Kind != proto.KindAgent {
				continue
			}
			av := AgentView{Cluster: p.Cluster, NodeID: p.NodeID, Online: p.Online}
			av.Path, av.LatencyMS = d.mesh.PathView(p.Key)
			if len(p.Addresses) > 0 {
				av.Address = p.Addresses[0].Addr().String()
			}
			if ps, ok := d.mesh.Node.PeerStatus(p.Key); ok {
				av.LastHandshake = ps.LastHandshake
			}
			resp.Agents = append(resp.Agents, av)
		}
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(resp)
	})
	contexts := func(add bool) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			req := contextRequest{cluster: r.PathValue("cluster"), add: add, reply: make(chan contextReply, 1)}
			select {
			case d.ctxReqs <- req:
			case <-r.Context().Done():
				return
			}
			var rep contextReply
			select {
			case rep = <-req.reply:
			case <-r.Context().Done():
				return
			}
			w.Header().Set("Content-Type", "application/json")
			if rep.err != nil {
				w.WriteHeader(http.StatusInternalServerError)
				json.NewEncoder(w).Encode(ContextsResponse{Error: rep.err.Error()})
				return
			}
			json.NewEncoder(w).Encode(ContextsResponse{Contexts: rep.contexts})
		}
	}
	mux.HandleFunc("POST /contexts/{cluster}", contexts(true))
	mux.HandleFunc("DELETE /contexts/{cluster}", contexts(false))
	d.control = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second, ReadTimeout: 30 * time.Second, IdleTimeout: time.Minute}
	srv := d.control
	d.wg.Go(func() { srv.Serve(l) })
	return nil
}
