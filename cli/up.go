package cli

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/clustral/clustral/cli/kubeconfig"
	"github.com/clustral/clustral/node"
	"github.com/clustral/clustral/pkg/atomicfile"
	"github.com/clustral/clustral/proto"
)

// The files of a running `clustral up`, in the profile directory.
const (
	upStateFile  = "up.json"    // upState, 0600 (holds the SOCKS credential)
	upLogFile    = "up.log"     // the background process's log
	upSocketFile = "up.sock"    // local status API (unix socket, 0600)
	deviceKey    = "device.key" // the device's WireGuard private key, 0600
)

// upState describes a running `clustral up`.
type upState struct {
	PID         int            `json:"pid"`
	Status      string         `json:"status"` // starting, connected
	Coordinator string         `json:"coordinator"`
	User        string         `json:"user"`
	NodeID      string         `json:"node_id"`
	Addresses   []string       `json:"addresses"`
	SOCKS       string         `json:"socks"`
	Kubeconfig  string         `json:"kubeconfig"`
	Contexts    []string       `json:"contexts"`
	Started     time.Time      `json:"started"`
	SOCKSUser   string         `json:"socks_user"`
	SOCKSPass   string         `json:"socks_password"`
	Expires     time.Time      `json:"expires"`
	Extra       map[string]any `json:"extra,omitempty"`

	// KubeconfigWas is the mode (octal) the kubeconfig had before up made
	// it 0600 to hold the SOCKS credential; empty if it was already.
	KubeconfigWas string `json:"kubeconfig_was,omitempty"`
}

func newUpCmd(g *globals) *cobra.Command {
	var (
		foreground bool
		socksPort  int
		kubeconfig string
		listenPort int
		timeout    time.Duration
		tunMode    bool
	)
	c := &cobra.Command{
		Use:   "up",
		Short: "Join the mesh and point kubectl at every cluster you may reach",
		Long: `Join the mesh: register this device's WireGuard key (generated here, kept
0600), bring up the tunnel and a SOCKS5 proxy on 127.0.0.1 that only you
can use, and write one kubeconfig context per reachable cluster
(clustral-<cluster>). Existing kubeconfig content is preserved. The
contexts carry the proxy's password, so a kubeconfig that others could read
is made mode 0600, and clustral up says so.

clustral up returns once connected and leaves a background process;
--foreground keeps it attached (containers, debugging). clustral down
stops it and removes its contexts.`,
		Example: `  clustral up
  kubectl --context clustral-prod get pods
  clustral up --foreground --kubeconfig ./kubeconfig`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			dir, err := g.dir()
			if err != nil {
				return err
			}
			if st, alive := readUpState(dir); alive {
				fmt.Fprintf(g.stdout, "Already up (pid %d, %d contexts). Run clustral down first to restart it.\n", st.PID, len(st.Contexts))
				return nil
			}
			if _, _, err := g.session(); err != nil {
				return err
			}
			if foreground {
				return runUp(c.Context(), g, dir, upOptions{socksPort, kubeconfig, listenPort, tunMode})
			}
			return startUpBackground(c.Context(), g, dir, timeout, upOptions{socksPort, kubeconfig, listenPort, tunMode})
		},
	}
	c.Flags().BoolVar(&foreground, "foreground", false, "stay attached instead of leaving a background process")
	c.Flags().IntVar(&socksPort, "socks-port", 0, "port of the local SOCKS5 proxy (default: a free port)")
	c.Flags().StringVar(&kubeconfig, "kubeconfig", "", "kubeconfig file to write contexts to (default: KUBECONFIG or ~/.kube/config)")
	c.Flags().IntVar(&listenPort, "wg-port", 0, "WireGuard UDP port (default: a free port)")
	c.Flags().DurationVar(&timeout, "timeout", 60*time.Second, "how long to wait for the tunnel to come up")
	c.Flags().BoolVar(&tunMode, "tun", false, "use a TUN device ("+tunName+") and route the overlay ranges, so any program reaches overlay addresses; the mesh may only answer connections this machine opens (Linux, root)")
	return c
}

type upOptions struct {
	socksPort  int
	kubeconfig string
	wgPort     int
	tun        bool
}

// startUpBackground starts `clustral up --foreground` as a detached
// process and waits until it reports connected.
func startUpBackground(ctx context.Context, g *globals, dir string, timeout time.Duration, o upOptions) error {
	self, err := os.Executable()
	if err != nil {
		return err
	}
	args := []string{"up", "--foreground"}
	if g.profile != "" {
		args = append(args, "--profile", g.profile)
	}
	if g.debug {
		args = append(args, "--debug")
	}
	args = append(args, "--socks-port", strconv.Itoa(o.socksPort), "--wg-port", strconv.Itoa(o.wgPort))
	if o.tun {
		args = append(args, "--tun")
	}
	if o.kubeconfig != "" {
		kc, err := filepath.Abs(o.kubeconfig)
		if err != nil {
			return err
		}
		args = append(args, "--kubeconfig", kc)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	logf, err := os.OpenFile(filepath.Join(dir, upLogFile), os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	defer logf.Close()
	cmd := exec.Command(self, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	cmd.Env = append(os.Environ(), "CLUSTRAL_UP_BACKGROUND=1")
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start background process: %w", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()

	sp := g.spinner("Bringing the tunnel up")
	defer sp.stop()
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case err := <-exited:
			sp.stop()
			tail, _ := os.ReadFile(filepath.Join(dir, upLogFile))
			return fmt.Errorf("clustral up exited (%v):\n%s", err, lastLines(string(tail), 15))
		case <-deadline.C:
			cmd.Process.Signal(syscall.SIGTERM)
			return withHint(exitUnreach, fmt.Errorf("the tunnel did not come up within %s", timeout), "see "+filepath.Join(dir, upLogFile)+", or run: clustral doctor")
		case <-ctx.Done():
			cmd.Process.Signal(syscall.SIGTERM)
			return ctx.Err()
		case <-tick.C:
			st, alive := readUpState(dir)
			if alive && st.PID == cmd.Process.Pid && st.Status == "connected" {
				sp.stop()
				cmd.Process.Release()
				printUp(g.stdout, st)
				return nil
			}
		}
	}
}

func printUp(w io.Writer, st *upState) {
	fmt.Fprintf(w, "Connected as %s (%s).\n", st.User, joinNonEmpty(st.Addresses))
	if len(st.Contexts) == 0 {
		fmt.Fprintln(w, "You may reach no cluster yet. Ask an administrator for a role, then run clustral up again.")
		return
	}
	if st.KubeconfigWas != "" {
		fmt.Fprintf(w, "kubeconfig %s was mode %s; it is now 0600 because it holds the tunnel's proxy credential.\n", st.Kubeconfig, st.KubeconfigWas)
	}
	fmt.Fprintf(w, "kubeconfig %s has %d context(s):\n", st.Kubeconfig, len(st.Contexts))
	for _, c := range st.Contexts {
		fmt.Fprintf(w, "  kubectl --context %s get pods\n", c)
	}
}

func joinNonEmpty(s []string) string {
	out := ""
	for _, v := range s {
		if v == "" {
			continue
		}
		if out != "" {
			out += ", "
		}
		out += v
	}
	return out
}

func lastLines(s string, n int) string {
	lines := slices.DeleteFunc(splitLines(s), func(l string) bool { return l == "" })
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	out := ""
	for _, l := range lines {
		out += "  " + l + "\n"
	}
	return out
}

func splitLines(s string) []string {
	var out []string
	start := 0
	for i := 0; i < len(s); i++ {
		if s[i] == '\n' {
			out = append(out, s[start:i])
			start = i + 1
		}
	}
	return append(out, s[start:])
}

// readUpState reads the state of a running up, and whether its process is
// alive.
func readUpState(dir string) (*upState, bool) {
	var st upState
	if err := atomicfile.ReadJSON(filepath.Join(dir, upStateFile), &st); err != nil {
		return nil, false
	}
	return &st, st.PID > 0 && syscall.Kill(st.PID, 0) == nil
}

// runUp is the foreground body of `clustral up`.
func runUp(ctx context.Context, g *globals, dir string, o upOptions) error {
	log := slog.New(slog.NewTextHandler(g.stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	if g.debug {
		log = g.logger()
	}
	sess, api, err := g.session()
	if err != nil {
		return err
	}
	priv, err := wgtypes.GeneratePrivateKey()
	if err != nil {
		return err
	}
	if err := atomicfile.Write(filepath.Join(dir, deviceKey), []byte(priv.String()+"\n"), 0o600); err != nil {
		return fmt.Errorf("store device key: %w", err)
	}
	host, _ := os.Hostname()
	var reg proto.RegisterResponse
	if err := api.do(ctx, "POST", proto.APIVersion+"/devices", proto.RegisterDeviceRequest{PublicKey: proto.Key(priv.PublicKey()), Hostname: sanitizeHostname(host)}, &reg); err != nil {
		return cliErr(err)
	}
	nodeAPI := &apiClient{base: api.base, token: reg.NodeToken, hc: api.hc}
	defer func() {
		// Deregister: the device leaves every map at once.
		dctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := nodeAPI.do(dctx, "DELETE", proto.APIVersion+"/nodes/self", nil, nil); err != nil {
			log.Warn("deregister device", "err", err)
		}
		os.Remove(filepath.Join(dir, deviceKey))
	}()

	m, err := joinMesh(priv, reg, o.wgPort, o.tun, log)
	if err != nil {
		return err
	}
	defer m.Close()

	socksUser, socksPass := "clustral", rand.Text()
	sl, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(o.socksPort)))
	if err != nil {
		return fmt.Errorf("listen for SOCKS5 on 127.0.0.1:%d: %w (pick another --socks-port)", o.socksPort, err)
	}
	// Clusters the user may request get a context too: kubectl then hears
	// a plain-text 403 naming the way forward instead of "no context".
	var who proto.Whoami
	if err := api.do(ctx, "GET", proto.APIVersion+"/whoami", nil, &who); err != nil {
		log.Warn("list requestable clusters", "err", err)
	}
	ttl := 24 * time.Hour
	if !reg.ExpiresAt.IsZero() {
		ttl = time.Until(reg.ExpiresAt) + time.Hour
	}
	deny, err := newDenier(sess.Session.User.Login, reg.MeshDomain, ttl)
	if err != nil {
		return err
	}
	socks := newSOCKSServer(socksUser, socksPass, m, deny.conn, log)
	go socks.Serve(sl)
	defer socks.Close()
	proxyURL := &url.URL{Scheme: "socks5", User: url.UserPassword(socksUser, socksPass), Host: sl.Addr().String()}

	kw := kubeconfig.Writer{Path: o.kubeconfig}
	st := &upState{
		PID: os.Getpid(), Status: "starting", Coordinator: sess.Coordinator, User: sess.Session.User.Login,
		NodeID: reg.NodeID, SOCKS: sl.Addr().String(), Kubeconfig: kw.File(), Started: time.Now(),
		SOCKSUser: socksUser, SOCKSPass: socksPass, Expires: reg.ExpiresAt,
	}
	for _, a := range reg.Addresses {
		st.Addresses = append(st.Addresses, a.Addr().String())
	}
	kw.Tightened = func(file string, was fs.FileMode) {
		log.Warn("kubeconfig made mode 0600: it now holds the SOCKS proxy credential", "file", file, "was", fmt.Sprintf("%04o", was))
		st.KubeconfigWas = fmt.Sprintf("%04o", was)
	}
	statePath := filepath.Join(dir, upStateFile)
	// The loop below owns st; the status socket reads the copy it
	// publishes after each change.
	var published atomic.Pointer[upState]
	publish := func() {
		c := *st
		c.Contexts = slices.Clone(st.Contexts)
		published.Store(&c)
	}
	publish()
	defer os.Remove(statePath)

	// Keep kubeconfig contexts in step with the clusters in the map, less
	// those clustral kube logout excluded (kube.json).
	var written []string
	sync := func() error {
		var want []kubeconfig.Context
		var names []string
		clusters := m.node.Clusters()
		for _, cl := range who.Requestable {
			if !slices.Contains(clusters, cl) {
				clusters = append(clusters, cl)
			}
		}
		slices.Sort(clusters)
		excluded := loadKubePrefs(dir).Excluded
		clusters = slices.DeleteFunc(clusters, func(cl string) bool { return slices.Contains(excluded, cl) })
		ca := append([]byte(m.node.CABundle()), deny.caPEM...)
		for _, cl := range clusters {
			want = append(want, kubeconfig.Context{Cluster: cl, Server: "https://" + cl + "." + m.node.MeshDomain(), CA: ca, Proxy: proxyURL, Login: sess.Session.User.Login})
			names = append(names, kubeconfig.ContextName(cl))
		}
		var remove []string
		for _, w := range written {
			if !slices.Contains(names, w) {
				remove = append(remove, w)
			}
		}
		if err := kw.Set(want, remove); err != nil {
			log.Error("update kubeconfig", "err", err)
			return err
		}
		written = names
		st.Contexts = names
		st.Status = "connected"
		publish()
		if err := atomicfile.WriteJSON(statePath, st, 0o600); err != nil {
			log.Error("write state", "err", err)
			return err
		}
		return nil
	}
	changes := make(chan node.Change, 16)
	removeSub := m.node.OnChange(func(ch node.Change) {
		select {
		case changes <- ch:
		default:
		}
	})
	defer removeSub()
	defer func() {
		if len(written) > 0 {
			if err := kw.Set(nil, written); err != nil {
				log.Error("remove kubeconfig contexts", "err", err)
			}
		}
	}()

	ctxReqs := make(chan contextRequest)
	ctl, err := serveControl(dir, published.Load, m, ctxReqs)
	if err != nil {
		return err
	}
	defer ctl.Close()

	streamErr := make(chan error, 1)
	go func() { streamErr <- runMapStream(ctx, m, nodeAPI, log) }()
	log.Info("joining the mesh", "coordinator", sess.Coordinator, "addresses", st.Addresses, "socks", st.SOCKS)
	for {
		select {
		case <-ctx.Done():
			log.Info("shutting down")
			return nil
		case err := <-streamErr:
			if ctx.Err() != nil {
				return nil
			}
			return err
		case req := <-ctxReqs:
			err := setExcluded(dir, req.cluster, !req.add)
			if err == nil {
				err = sync()
			}
			req.reply <- contextReply{slices.Clone(st.Contexts), err}
		case ch := <-changes:
			if ch.Snapshot || len(ch.ClustersAdded)+len(ch.ClustersRemoved) > 0 || ch.SelfChanged || st.Status != "connected" {
				sync()
			}
		}
	}
}

func sanitizeHostname(h string) string {
	out := []byte{}
	for i := 0; i < len(h) && len(out) < 63; i++ {
		c := h[i]
		if c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '.' || c == '_' {
			out = append(out, c)
		}
	}
	if len(out) == 0 {
		return "device"
	}
	return string(out)
}

// serveControl serves the local status API of a running up on a unix
// socket in the profile directory (mode 0600).
//
// POST and DELETE /contexts/{cluster} add and remove one cluster's
// kubeconfig context (clustral kube login/logout); they are handed to reqs,
// which the up's main loop serves, so contexts have one writer.
// serveControl serves the status socket. state returns the latest state
// the up loop published; the loop owns the live one.
func serveControl(dir string, state func() *upState, m *mesh, reqs chan<- contextRequest) (io.Closer, error) {
	path := filepath.Join(dir, upSocketFile)
	os.Remove(path)
	l, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("control socket: %w", err)
	}
	os.Chmod(path, 0o600)
	mux := http.NewServeMux()
	mux.HandleFunc("GET /status", func(w http.ResponseWriter, r *http.Request) {
		resp := struct {
			State  *upState    `json:"state"`
			Agents []agentView `json:"agents"`
		}{State: state()}
		for _, p := range m.node.Peers() {
			if p.Kind != proto.KindAgent {
				continue
			}
			av := agentView{Cluster: p.Cluster, NodeID: p.NodeID, Online: p.Online}
			av.Path, av.LatencyMS = m.pathView(p.Key)
			if len(p.Addresses) > 0 {
				av.Address = p.Addresses[0].Addr().String()
			}
			if ps, ok := m.node.PeerStatus(p.Key); ok {
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
			case reqs <- req:
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
				json.NewEncoder(w).Encode(contextsResponse{Error: rep.err.Error()})
				return
			}
			json.NewEncoder(w).Encode(contextsResponse{Contexts: rep.contexts})
		}
	}
	mux.HandleFunc("POST /contexts/{cluster}", contexts(true))
	mux.HandleFunc("DELETE /contexts/{cluster}", contexts(false))
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second, ReadTimeout: 30 * time.Second, IdleTimeout: time.Minute}
	go srv.Serve(l)
	return closerFunc(func() error { err := srv.Close(); os.Remove(path); return err }), nil
}

type closerFunc func() error

func (f closerFunc) Close() error { return f() }

func newDownCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:     "down",
		Short:   "Leave the mesh and remove clustral's kubeconfig contexts",
		Example: "  clustral down",
		Args:    cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			dir, err := g.dir()
			if err != nil {
				return err
			}
			if err := stopUp(g, dir); err != nil {
				return err
			}
			return nil
		},
	}
}

// stopUp stops a running up and waits for it to clean up.
func stopUp(g *globals, dir string) error {
	st, alive := readUpState(dir)
	if !alive {
		if st != nil {
			// A crashed up: clean its contexts here.
			kubeconfig.Writer{Path: st.Kubeconfig}.Set(nil, st.Contexts)
			os.Remove(filepath.Join(dir, upStateFile))
		}
		fmt.Fprintln(g.stdout, "clustral is not up.")
		return nil
	}
	if err := syscall.Kill(st.PID, syscall.SIGTERM); err != nil {
		return fmt.Errorf("stop clustral up (pid %d): %w", st.PID, err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if syscall.Kill(st.PID, 0) != nil {
			fmt.Fprintf(g.stdout, "Down. Removed %d kubeconfig context(s).\n", len(st.Contexts))
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("clustral up (pid %d) did not stop within 10s", st.PID)
}
