// Package ui is the local web page of `clustral ui`: the live view of
// the clusters `clustral up` reaches, served on 127.0.0.1 to one browser.
//
// Cluster data goes from each cluster's agent over the mesh (through the
// SOCKS proxy of `clustral up`, as kubectl goes) to this process, and
// from here to the browser on loopback; it never passes the coordinator.
// The agent filters it by the user's own access (agent/live), and pod
// logs are read through the agent's Kubernetes proxy like `kubectl logs
// -f`.
//
// The page is guarded like a local credential: the URL printed at start
// carries a random token that is exchanged, once, for a cookie
// (HttpOnly, SameSite=Strict); every request must name the listener's
// own address as Host (no DNS rebinding), must not come from another
// origin, and is answered with a Content-Security-Policy that allows the
// page's own script and style only.
package ui

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/subtle"
	"embed"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"path"
	"regexp"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/clustral/clustral/agent/live"
	"github.com/clustral/clustral/pkg/webstyle"
	"github.com/clustral/clustral/proto"
)

//go:embed static
var staticFS embed.FS

// Cluster is one cluster the page shows: its agent's URL and the client
// that reaches it (through the mesh, with the mesh CA).
type Cluster struct {
	Name   string
	Base   string
	Client *http.Client
}

// Server serves the page. It is an http.Handler and safe for concurrent
// use.
type Server struct {
	clusters map[string]Cluster
	names    []string
	host     string // the listener's host:port, the only Host accepted
	log      *slog.Logger
	static   http.Handler
	style    http.Handler

	mu      sync.Mutex
	token   string // the URL's token; "" once exchanged
	session string // the cookie's value
}

// cookieName names the session cookie.
const cookieName = "clustral_ui"

// New returns a Server for clusters that will be reached at host
// (host:port of its listener), and the URL that opens it: the path,
// with the one-time token. log may be nil.
func New(host string, clusters []Cluster, log *slog.Logger) (*Server, string) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	sub, err := fs.Sub(staticFS, "static")
	if err != nil {
		panic(err)
	}
	s := &Server{
		clusters: make(map[string]Cluster, len(clusters)),
		host:     host,
		log:      log,
		static:   http.StripPrefix("/static/", http.FileServerFS(sub)),
		style:    http.StripPrefix("/static/", http.FileServerFS(webstyle.FS)),
		token:    rand.Text(),
		session:  rand.Text(),
	}
	for _, c := range clusters {
		s.clusters[c.Name] = c
		s.names = append(s.names, c.Name)
	}
	slices.Sort(s.names)
	return s, "http://" + host + "/?token=" + s.token
}

// csp allows the page's own script, style and streams, nothing inline and
// no framing.
const csp = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; " +
	"form-action 'none'; frame-ancestors 'none'; base-uri 'none'"

// ServeHTTP checks the request's host, origin and session, then serves
// it.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	h.Set("Content-Security-Policy", csp)
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("X-Frame-Options", "DENY")
	h.Set("Referrer-Policy", "no-referrer")
	h.Set("Cross-Origin-Opener-Policy", "same-origin")
	h.Set("Cross-Origin-Resource-Policy", "same-origin")
	h.Set("Cache-Control", "no-store")
	if r.Host != s.host {
		refuse(w, http.StatusMisdirectedRequest, "This page answers only at http://"+s.host+"/. Open the link clustral ui printed.")
		return
	}
	if o := r.Header.Get("Origin"); o != "" && o != "http://"+s.host {
		refuse(w, http.StatusForbidden, "Requests from other sites are refused.")
		return
	}
	if site := r.Header.Get("Sec-Fetch-Site"); site != "" && site != "same-origin" && site != "none" {
		refuse(w, http.StatusForbidden, "Requests from other sites are refused.")
		return
	}
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		h.Set("Allow", "GET, HEAD")
		refuse(w, http.StatusMethodNotAllowed, "This page only reads.")
		return
	}
	if tok := r.URL.Query().Get("token"); tok != "" {
		s.exchange(w, r, tok)
		return
	}
	if !s.signedIn(r) {
		refuse(w, http.StatusUnauthorized, "No session. Open the link clustral ui printed (it works once), or run clustral ui again.")
		return
	}
	p := r.URL.Path
	switch {
	case p == "/static/console.css":
		h.Set("Cache-Control", "no-cache")
		s.style.ServeHTTP(w, r)
	case strings.HasPrefix(p, "/static/"):
		h.Set("Cache-Control", "no-cache")
		s.static.ServeHTTP(w, r)
	case p == "/api/clusters":
		writeJSON(w, s.names)
	case strings.HasPrefix(p, "/api/live/"):
		s.serveLive(w, r, strings.TrimPrefix(p, "/api/live/"))
	case strings.HasPrefix(p, "/api/logs/"):
		s.serveLogs(w, r, strings.TrimPrefix(p, "/api/logs/"))
	case strings.HasPrefix(p, "/api/"):
		refuse(w, http.StatusNotFound, "No such API path.")
	default:
		// Every other path is a place in the page (a deep link such as
		// /prod/ns/web/pods/api-7c9); the script reads it.
		b, _ := staticFS.ReadFile("static/index.html")
		h.Set("Content-Type", "text/html; charset=utf-8")
		w.Write(b)
	}
}

// exchange trades the URL's token, once, for the session cookie, and
// sends the browser on to the same place without the token.
func (s *Server) exchange(w http.ResponseWriter, r *http.Request, tok string) {
	s.mu.Lock()
	ok := s.token != "" && subtle.ConstantTimeCompare([]byte(tok), []byte(s.token)) == 1
	if ok {
		s.token = ""
	}
	s.mu.Unlock()
	if !ok {
		refuse(w, http.StatusUnauthorized, "This link is not valid any more: its token works once. Use the browser that opened it, or run clustral ui again.")
		return
	}
	http.SetCookie(w, &http.Cookie{Name: cookieName, Value: s.session, Path: "/", HttpOnly: true, SameSite: http.SameSiteStrictMode})
	q := r.URL.Query()
	q.Del("token")
	// Back to the same place on this page: a path such as //host must
	// not turn the redirect into one to another site.
	u := url.URL{Path: "/" + strings.TrimLeft(path.Clean(r.URL.Path), "/"), RawQuery: q.Encode()}
	http.Redirect(w, r, u.String(), http.StatusSeeOther)
}

func (s *Server) signedIn(r *http.Request) bool {
	c, err := r.Cookie(cookieName)
	return err == nil && subtle.ConstantTimeCompare([]byte(c.Value), []byte(s.session)) == 1
}

func refuse(w http.ResponseWriter, status int, msg string) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.WriteHeader(status)
	io.WriteString(w, msg+"\n")
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(v)
}

func (s *Server) cluster(w http.ResponseWriter, name string) (Cluster, bool) {
	c, ok := s.clusters[name]
	if !ok {
		refuse(w, http.StatusNotFound, fmt.Sprintf("No cluster %q: clustral up reaches %s.", name, strings.Join(s.names, ", ")))
	}
	return c, ok
}

// sse writes server-sent events.
type sse struct {
	w  io.Writer
	rc *http.ResponseController
}

func startSSE(w http.ResponseWriter) *sse {
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	w.WriteHeader(http.StatusOK)
	e := &sse{w: w, rc: http.NewResponseController(w)}
	io.WriteString(w, "retry: 1000\n\n")
	e.rc.Flush()
	return e
}

// send writes one event; id, if not empty, is where the browser resumes.
func (e *sse) send(event, id string, data []byte) error {
	var b strings.Builder
	if id != "" {
		b.WriteString("id: " + id + "\n")
	}
	b.WriteString("event: " + event + "\n")
	for line := range strings.SplitSeq(string(data), "\n") {
		b.WriteString("data: " + line + "\n")
	}
	b.WriteString("\n")
	if _, err := io.WriteString(e.w, b.String()); err != nil {
		return err
	}
	return e.rc.Flush()
}

// serveLive relays the agent's live stream of cluster as server-sent
// events, resuming from the browser's Last-Event-ID. Only events after
// which the browser's state is whole carry an id: a change, or the end
// of a snapshot.
func (s *Server) serveLive(w http.ResponseWriter, r *http.Request, name string) {
	c, ok := s.cluster(w, name)
	if !ok {
		return
	}
	since, err := proto.ParseLiveCursor(r.Header.Get("Last-Event-ID"))
	if err != nil {
		since = proto.LiveCursor{}
	}
	out := startSSE(w)
	inSnapshot := false
	err = live.Follow(r.Context(), c.Client, c.Base, since, func(e proto.LiveEvent) error {
		if e.Type == proto.LivePing {
			return out.send("ping", "", []byte("{}"))
		}
		id := ""
		switch {
		case e.Type == proto.LiveSnapshot:
			inSnapshot = true
		case e.Type == proto.LiveSynced:
			inSnapshot = false
			id = proto.LiveCursor{Epoch: e.Epoch, Rev: e.Rev}.String()
		case !inSnapshot:
			id = proto.LiveCursor{Epoch: e.Epoch, Rev: e.Rev}.String()
		}
		b, err := json.Marshal(e)
		if err != nil {
			return err
		}
		return out.send("live", id, b)
	})
	if r.Context().Err() != nil {
		return
	}
	msg := map[string]any{"message": err.Error()}
	var se *live.StatusError
	if errors.As(err, &se) {
		msg = map[string]any{"message": se.Message, "status": se.Status, "code": se.Code}
	}
	b, _ := json.Marshal(msg)
	out.send("failure", "", b)
	s.log.Debug("live stream ended", "cluster", name, "err", err)
}

// dnsName is what a namespace, pod or container name may be.
var dnsName = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(`^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$`) })

// serveLogs follows a pod's log through the agent's Kubernetes proxy, as
// `kubectl logs -f` does, and relays its lines as server-sent events.
// The path is <cluster>/<namespace>/<pod>; ?container= picks one.
func (s *Server) serveLogs(w http.ResponseWriter, r *http.Request, rest string) {
	parts := strings.Split(rest, "/")
	if len(parts) != 3 {
		refuse(w, http.StatusNotFound, "Logs are at /api/logs/<cluster>/<namespace>/<pod>.")
		return
	}
	c, ok := s.cluster(w, parts[0])
	if !ok {
		return
	}
	ns, pod, container := parts[1], parts[2], r.URL.Query().Get("container")
	if !dnsName().MatchString(ns) || !dnsName().MatchString(pod) || container != "" && !dnsName().MatchString(container) {
		refuse(w, http.StatusBadRequest, "Not a namespace, pod or container name.")
		return
	}
	q := url.Values{"follow": {"true"}, "tailLines": {"500"}}
	if container != "" {
		q.Set("container", container)
	}
	u := c.Base + "/api/v1/namespaces/" + ns + "/pods/" + pod + "/log?" + q.Encode()
	req, err := http.NewRequestWithContext(r.Context(), http.MethodGet, u, nil)
	if err != nil {
		refuse(w, http.StatusBadRequest, err.Error())
		return
	}
	res, err := c.Client.Do(req)
	out := startSSE(w)
	if err != nil {
		b, _ := json.Marshal(map[string]any{"message": "cannot reach the agent of " + c.Name + ": " + err.Error()})
		out.send("failure", "", b)
		return
	}
	defer res.Body.Close()
	if res.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(io.LimitReader(res.Body, 4<<10))
		b, _ := json.Marshal(map[string]any{"message": strings.TrimSpace(string(body)), "status": res.StatusCode})
		out.send("failure", "", b)
		return
	}
	err = logLines(res.Body, maxLogLine, func(l string) error {
		b, _ := json.Marshal(l)
		return out.send("line", "", b)
	})
	if err != nil {
		b, _ := json.Marshal(map[string]any{"message": "the log stream from the agent of " + c.Name + " broke: " + err.Error()})
		out.send("failure", "", b)
		return
	}
	b, _ := json.Marshal(map[string]any{"message": "the log ended"})
	out.send("end", "", b)
}

// maxLogLine is the longest log line the page shows whole.
const maxLogLine = 1 << 20

// logLines calls line for each line of r, without its line ending, until
// r ends (it then returns nil) or fails or line does. A line longer than
// limit bytes is passed on cut to its first limit bytes, with a note saying
// so; the lines after it follow as usual.
func logLines(r io.Reader, limit int, line func(string) error) error {
	br := bufio.NewReaderSize(r, 64<<10)
	var buf []byte
	cut := false
	for {
		chunk, err := br.ReadSlice('\n')
		body, end := bytes.CutSuffix(chunk, []byte("\n"))
		if n := limit - len(buf); len(body) > n {
			buf, cut = append(buf, body[:n]...), true
		} else {
			buf = append(buf, body...)
		}
		if errors.Is(err, bufio.ErrBufferFull) {
			continue
		}
		if end || len(buf) > 0 {
			l := strings.TrimSuffix(string(buf), "\r")
			if cut {
				l += fmt.Sprintf(" [line cut at %d bytes]", limit)
			}
			if lerr := line(l); lerr != nil {
				return lerr
			}
		}
		buf, cut = buf[:0], false
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
	}
}

// Serve serves s on l until ctx is done.
func Serve(ctx context.Context, l net.Listener, s *Server) error {
	srv := &http.Server{Handler: s, ReadHeaderTimeout: 10 * time.Second, BaseContext: func(net.Listener) context.Context { return ctx }}
	go func() {
		<-ctx.Done()
		srv.Close()
	}()
	if err := srv.Serve(l); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}
