package cli

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"flag"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"k8s.io/client-go/tools/clientcmd"

	"github.com/clustral/clustral/cli/device"
	"github.com/clustral/clustral/cli/kubeconfig"
	"github.com/clustral/clustral/coordinator"
	"github.com/clustral/clustral/coordinator/coordinatortest"
	"github.com/clustral/clustral/netstack/socks5"
	"github.com/clustral/clustral/pkg/atomicfile"
	"github.com/clustral/clustral/pkg/testkit"
	"github.com/clustral/clustral/proto"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden from the commands' output")

// fixedNow is the clock of every test that uses a testEnv.
var fixedNow = time.Date(2030, 1, 2, 10, 0, 0, 0, time.UTC)

// testClock, when set, is the time now returns.
var testClock atomic.Pointer[time.Time]

func TestMain(m *testing.M) {
	flag.Parse()
	// Before any goroutine runs: output shows times in UTC, and the clock
	// is switchable without a race.
	time.Local = time.UTC
	now = func() time.Time {
		if t := testClock.Load(); t != nil {
			return *t
		}
		return time.Now()
	}
	os.Exit(m.Run())
}

// testEnv is an isolated config directory, kubeconfig and, unless it is
// bare, a real coordinator in-process, with the CLI's clock fixed at
// fixedNow.
type testEnv struct {
	t          *testing.T
	base       string // CLUSTRAL_CONFIG_DIR
	dir        string // the default profile's directory
	kubeconfig string
	coordURL   string // the coordinator's URL
	caFile     string // trusts the coordinator's certificate
	real       *coordinatortest.Coordinator
	// realNow is the real coordinator's clock; see setRealNow.
	realNow atomic.Pointer[time.Time]
	// joinToken, if set, replaces the join tokens in the output (raw and
	// in a manifest's Secret) in mask.
	joinToken string
}

// newRealEnv is a testEnv with a real coordinator in-process: its store
// in a temporary directory, its clock fixedNow (see setRealNow),
// admin@example.com its
// administrator, and configure (if not nil) applied to its Config.
func newRealEnv(t *testing.T, configure func(*coordinator.Config)) *testEnv {
	t.Helper()
	e := newBareEnv(t)
	e.realNow.Store(&fixedNow)
	e.real = coordinatortest.Start(t, func() time.Time { return *e.realNow.Load() }, func(c *coordinator.Config) {
		c.Admins = []string{"admin@example.com"}
		if configure != nil {
			configure(c)
		}
	})
	e.coordURL, e.caFile = e.real.URL, e.real.CAFile
	return e
}

// setRealNow sets the real coordinator's clock to fixedNow+d, to set
// up what happened before fixedNow; the CLI's stays at fixedNow.
func (e *testEnv) setRealNow(d time.Duration) {
	t := fixedNow.Add(d)
	e.realNow.Store(&t)
}

// newBareEnv is a testEnv without a coordinator.
func newBareEnv(t *testing.T) *testEnv {
	t.Helper()
	// Short: unix socket paths are limited to ~100 bytes.
	tmp, err := os.MkdirTemp("", "cl")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(tmp) })
	e := &testEnv{t: t, base: filepath.Join(tmp, "c"), kubeconfig: filepath.Join(tmp, "kubeconfig")}
	e.dir = filepath.Join(e.base, "profiles", "default")
	for k, v := range map[string]string{
		"CLUSTRAL_CONFIG_DIR": e.base, "KUBECONFIG": e.kubeconfig, "HOME": tmp, "XDG_CONFIG_HOME": tmp,
		"CLUSTRAL_PROFILE": "", "CLUSTRAL_CA_FILE": "", "NO_COLOR": "", "TERM": "xterm", "DISPLAY": "", "WAYLAND_DISPLAY": "",
	} {
		t.Setenv(k, v)
	}
	testClock.Store(&fixedNow)
	t.Cleanup(func() { testClock.Store(nil) })
	return e
}

// useSession stores s as the CLI's session with e's coordinator.
func (e *testEnv) useSession(s proto.Session) {
	e.t.Helper()
	if err := saveSession(e.dir, &storedSession{Coordinator: e.coordURL, CAFile: e.caFile, Session: s}); err != nil {
		e.t.Fatal(err)
	}
}

// login stores a session for login (groups dev) that expires at expires
// and returns its token: e's coordinator issues it, logged in a
// session's length before.
func (e *testEnv) login(login string, expires time.Time) string {
	e.t.Helper()
	e.setRealNow(expires.Sub(fixedNow) - e.real.Config().SessionTTL)
	s := e.real.Login(login, "dev")
	e.setRealNow(0)
	e.useSession(s)
	return s.Token
}

// run runs the CLI in-process without a terminal.
func (e *testEnv) run(args ...string) (code int, stdout, stderr string) {
	e.t.Helper()
	var out, errb bytes.Buffer
	code = run(context.Background(), args, strings.NewReader(""), &out, &errb)
	return code, out.String(), errb.String()
}

// mask replaces what changes from run to run: the coordinator's address,
// temporary paths, ports and process ids.
func (e *testEnv) mask(s string) string {
	if e.coordURL != "" {
		s = strings.ReplaceAll(s, e.coordURL, "https://COORD")
		s = strings.ReplaceAll(s, e.caFile, "$CAFILE")
	}
	s = strings.ReplaceAll(s, e.kubeconfig, "$KUBECONFIG")
	s = strings.ReplaceAll(s, runtime.Version(), "GOVERSION")
	s = strings.ReplaceAll(s, runtime.GOOS+"/"+runtime.GOARCH, "PLATFORM")
	s = strings.ReplaceAll(s, e.base, "$CONFIG")
	s = regexp.MustCompile(`127\.0\.0\.1:\d+`).ReplaceAllString(s, "127.0.0.1:PORT")
	s = regexp.MustCompile(`pid \d+`).ReplaceAllString(s, "pid N")
	// The coordinator names the access request a grant comes from by its
	// id, random where the test does not fix the coordinator's ids.
	s = regexp.MustCompile(`"source": "grant:req_[0-9a-f]+"`).ReplaceAllString(s, `"source": "grant:req_ID"`)
	if e.joinToken != "" {
		s = joinTokenRE.ReplaceAllString(s, e.joinToken)
		s = secretTokenRE.ReplaceAllStringFunc(s, func(m string) string {
			b64 := strings.TrimPrefix(m, "token: ")
			if raw, err := base64.StdEncoding.DecodeString(b64); err == nil && joinTokenRE.Match(raw) {
				return "token: " + base64.StdEncoding.EncodeToString([]byte(e.joinToken))
			}
			return m
		})
	}
	return s
}

// expand replaces $CONFIG in arg with e's config directory, as mask
// shows it.
func (e *testEnv) expand(arg string) string { return strings.ReplaceAll(arg, "$CONFIG", e.base) }

// A join token as the coordinator makes them, and a Secret's data
// holding one.
var (
	joinTokenRE   = regexp.MustCompile(`cjt_[A-Za-z0-9_-]{43}`)
	secretTokenRE = regexp.MustCompile(`token: [A-Za-z0-9+/=]+`)
)

// golden compares got with testdata/name.golden; -update rewrites it.
func golden(t *testing.T, name, got string) {
	t.Helper()
	testkit.Golden(t, filepath.Join("testdata", name+".golden"), []byte(got), *update, "go test ./cli -run "+t.Name()+" -update")
}

func writeTestJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(v)
}

// fakeUp stands in for a running `clustral up` of the test's profile: its
// up.json (this process's pid), a real SOCKS5 server, kubeconfig contexts
// pointing at it, and the control socket with /status and /contexts.
type fakeUp struct {
	e      *testEnv
	mu     sync.Mutex
	st     *device.State
	agents []device.AgentView
	reqs   []string // "POST prod", "DELETE staging"
}

func startFakeUp(e *testEnv, clusters ...string) *fakeUp {
	t := e.t
	t.Helper()
	u := &fakeUp{e: e}
	srv := &socks5.Server{Username: "clustral", Password: "s3cret", Dial: func(context.Context, string, string, uint16) (net.Conn, error) {
		return nil, errors.New("no mesh in this test")
	}}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	u.st = &device.State{
		PID: os.Getpid(), Status: "connected", Coordinator: e.coordURL, User: "alice@example.com", NodeID: "n-device",
		Addresses: []string{"100.64.0.2", "fd7a:115c:a1e0::2"}, SOCKS: l.Addr().String(), Kubeconfig: e.kubeconfig,
		Started: fixedNow.Add(-time.Hour), SOCKSUser: "clustral", SOCKSPass: "s3cret", Expires: fixedNow.Add(8 * time.Hour),
	}
	u.agents = []device.AgentView{{Cluster: "prod", NodeID: "n-agent1", Address: "100.64.0.1", Online: true, LastHandshake: fixedNow.Add(-20 * time.Second), Path: "direct"}}
	for _, c := range clusters {
		u.setContext(c, true)
	}
	if len(clusters) > 0 {
		cfg, err := clientcmd.LoadFromFile(e.kubeconfig)
		if err != nil {
			t.Fatal(err)
		}
		cfg.CurrentContext = kubeconfig.ContextName(clusters[0])
		if err := clientcmd.WriteToFile(*cfg, e.kubeconfig); err != nil {
			t.Fatal(err)
		}
	}

	sock := filepath.Join(e.dir, device.SocketFile)
	os.MkdirAll(e.dir, 0o700)
	ul, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /status", func(w http.ResponseWriter, _ *http.Request) {
		u.mu.Lock()
		defer u.mu.Unlock()
		writeTestJSON(w, map[string]any{"state": u.st, "agents": u.agents})
	})
	ctxs := func(add bool) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			cl := r.PathValue("cluster")
			u.mu.Lock()
			u.reqs = append(u.reqs, r.Method+" "+cl)
			u.mu.Unlock()
			if err := device.SetExcluded(e.dir, cl, !add); err != nil {
				writeTestJSON(w, device.ContextsResponse{Error: err.Error()})
				return
			}
			writeTestJSON(w, device.ContextsResponse{Contexts: u.setContext(cl, add)})
		}
	}
	mux.HandleFunc("POST /contexts/{cluster}", ctxs(true))
	mux.HandleFunc("DELETE /contexts/{cluster}", ctxs(false))
	os.Chmod(sock, 0o600)
	hs := &http.Server{Handler: mux}
	go hs.Serve(ul)
	t.Cleanup(func() { hs.Close() })
	u.save()
	return u
}

// setContext writes or removes cluster's context the way up does, and
// returns the contexts afterwards.
func (u *fakeUp) setContext(cluster string, add bool) []string {
	u.mu.Lock()
	defer u.mu.Unlock()
	name := kubeconfig.ContextName(cluster)
	kw := kubeconfig.Writer{Path: u.e.kubeconfig}
	proxy := &url.URL{Scheme: "socks5", User: url.UserPassword(u.st.SOCKSUser, u.st.SOCKSPass), Host: u.st.SOCKS}
	if add {
		if err := kw.Set([]kubeconfig.Context{{Cluster: cluster, Server: "https://" + cluster + ".clustral.internal", CA: []byte("ca"), Proxy: proxy, Login: u.st.User}}, nil); err != nil {
			u.e.t.Error(err)
		}
		if !slices.Contains(u.st.Contexts, name) {
			u.st.Contexts = append(u.st.Contexts, name)
			slices.Sort(u.st.Contexts)
		}
	} else {
		if err := kw.Set(nil, []string{name}); err != nil {
			u.e.t.Error(err)
		}
		u.st.Contexts = slices.DeleteFunc(u.st.Contexts, func(c string) bool { return c == name })
	}
	if u.st != nil {
		atomicfile.WriteJSON(filepath.Join(u.e.dir, device.StateFile), u.st, 0o600)
	}
	return slices.Clone(u.st.Contexts)
}

// set changes the fake up under its lock and rewrites up.json.
func (u *fakeUp) set(change func(*fakeUp)) {
	u.mu.Lock()
	change(u)
	u.mu.Unlock()
	u.save()
}

func (u *fakeUp) save() {
	u.mu.Lock()
	defer u.mu.Unlock()
	if err := atomicfile.WriteJSON(filepath.Join(u.e.dir, device.StateFile), u.st, 0o600); err != nil {
		u.e.t.Fatal(err)
	}
}
