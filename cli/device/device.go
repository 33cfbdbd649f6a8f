// Package device is the runtime of `clustral up`: it registers this
// device with the coordinator, joins the mesh, serves a loopback SOCKS5
// proxy and one kubeconfig context per cluster the user may reach, and
// keeps them in step with the network map until it is stopped. Run is its
// one entry point; the `clustral up` command parses flags, builds a
// Config and calls it.
//
// A running device keeps its files in the profile directory: the state
// (StateFile), a status socket (SocketFile), the device key (KeyFile),
// and honours the clusters excluded in KubePrefsFile.
package device

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/clustral/clustral/node/mesh"
	"github.com/clustral/clustral/pkg/atomicfile"
	"github.com/clustral/clustral/pkg/coordclient"
	"github.com/clustral/clustral/proto"
)

// The files of a running device, in the profile directory.
const (
	StateFile  = "up.json"    // State, 0600 (holds the SOCKS credential)
	SocketFile = "up.sock"    // local status API (unix socket, 0600)
	KeyFile    = "device.key" // the device's WireGuard private key, 0600
)

// State describes a running device. Run writes it to StateFile and
// serves it on the status socket.
type State struct {
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
	// DNS is the mesh DNS of --tun mode; nil when off.
	DNS *DNSState `json:"dns,omitempty"`

	// KubeconfigWas is the mode (octal) the kubeconfig had before up made
	// it 0600 to hold the SOCKS credential; empty if it was already.
	KubeconfigWas string `json:"kubeconfig_was,omitempty"`

	// Stages are when each step of bringing the device up ended, in
	// order (the Stage* names): where the time from `clustral up` to
	// the first kubectl goes (integration/cmd/bench prints it).
	Stages []Stage `json:"stages,omitempty"`
}

// Stage is when one step of bringing the device up ended.
type Stage struct {
	Name string    `json:"name"`
	At   time.Time `json:"at"`
	// CPU is the CPU time (user and system) the process had used by
	// then, from its start; zero if unknown. It is steadier than At on
	// a busy machine.
	CPU time.Duration `json:"cpu_ns,omitzero"`
}

// The steps of Run, in order, as State.Stages names them.
const (
	StageStart      = "start"      // Run called: the process is running
	StageRegistered = "registered" // the coordinator acknowledged the device
	StageJoined     = "joined"     // WireGuard is up
	StageServing    = "serving"    // map stream started; SOCKS5 proxy, status socket
	StageRelay      = "relay"      // the relay connected: the map stream opens
	StageSnapshot   = "snapshot"   // the first network map applied
	StageConnected  = "connected"  // kubeconfig contexts and StateFile written
)

// ReadState reads the state of the device running for the profile
// directory dir, and whether its process is alive.
func ReadState(dir string) (*State, bool) {
	var st State
	if err := atomicfile.ReadJSON(filepath.Join(dir, StateFile), &st); err != nil {
		return nil, false
	}
	return &st, Alive(st.PID)
}

// Config configures Run.
type Config struct {
	// Dir is the profile directory, where the device keeps its files.
	Dir string
	// Coordinator reaches the coordinator with the user's session token:
	// Run registers the device with it, and makes the node's calls (the
	// map stream among them) with it and the node token. Run returns the
	// error of the registration unchanged, so the caller may render it.
	Coordinator *coordclient.Client
	// User is the user's login.
	User string
	// RelayClient carries the relay (see mesh.Coordinator); nil means
	// Coordinator's *http.Client.
	RelayClient *http.Client

	// SOCKSPort is the loopback port of the SOCKS5 proxy, WGPort the
	// WireGuard UDP port; 0 picks a free one.
	SOCKSPort int
	WGPort    int
	// TUN puts the node on a TUN device instead of a netstack (see
	// mesh.Config).
	TUN bool
	// Kubeconfig is the kubeconfig file for the contexts; empty means
	// KUBECONFIG or ~/.kube/config.
	Kubeconfig string
	// DNS, in TUN mode, serves the mesh DNS on the device's IPv4 overlay
	// address and points the system's resolver at it for the mesh domain
	// by this method; "" is DNSOff. Whatever it changes is recorded in
	// DNSFile and undone when Run returns, or by the next Run or
	// RestoreDNS after a crash.
	DNS DNSMethod
	// ResolvConf is the file the resolv.conf method edits; empty means
	// DefaultResolvConf.
	ResolvConf string

	Logger *slog.Logger

	// Connected, if set, is called once, from Run's goroutine, when the
	// device is first connected: its kubeconfig contexts and StateFile
	// are written.
	Connected func()
}

// Run runs the device until ctx is done or the map stream fails:
// register, join, serve, wait. On return it has removed its kubeconfig
// contexts and files, left the mesh and deregistered, and every goroutine
// it started has ended. It returns nil when ctx ends it.
func Run(ctx context.Context, cfg Config) error {
	if err := cfg.check(); err != nil {
		return err
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	d := &device{cfg: cfg, log: cfg.Logger}
	d.stage(StageStart)

	// A run that crashed may have left the system's resolver pointed at
	// its mesh DNS.
	if done, err := RestoreDNS(cfg.Dir); err != nil {
		return err
	} else if done != "" {
		d.log.Info("restored the system's DNS after an earlier clustral up", "done", done)
	}

	// Clusters the user may request get a context too: kubectl then
	// hears a plain-text 403 naming the way forward instead of "no
	// context". Only the contexts need the answer: ask while registering.
	stopAsking := d.askWhoami(ctx)
	defer stopAsking()

	// Register: a fresh WireGuard key, and this device in the coordinator.
	if err := d.register(ctx); err != nil {
		return err
	}
	defer d.deregister()
	d.stage(StageRegistered)

	// Join: the WireGuard node on a netstack or a TUN device.
	m, err := mesh.Join(mesh.Config{PrivateKey: d.key, Registration: d.reg, ListenPort: cfg.WGPort, TUN: cfg.TUN, Logger: d.log})
	if err != nil {
		return err
	}
	defer m.Close()
	d.mesh = m
	d.stage(StageJoined)

	// Serve: the map stream, the SOCKS5 proxy, the mesh DNS (--tun),
	// the state and the status socket.
	if err := d.serve(ctx); err != nil {
		return err
	}
	defer d.stop()
	d.stage(StageServing)

	// Wait: keep the contexts in step with the map until ctx is done or
	// the map stream fails.
	return d.wait(ctx)
}

// check names the first field Run cannot do without.
func (cfg Config) check() error {
	for _, f := range []struct {
		name    string
		missing bool
	}{
		{"Dir", cfg.Dir == ""},
		{"Coordinator", cfg.Coordinator == nil || cfg.Coordinator.Token() == ""},
		{"User", cfg.User == ""},
	} {
		if f.missing {
			return fmt.Errorf("device: Config.%s is not set (the caller builds it from the stored session)", f.name)
		}
	}
	return nil
}

// device is one run of Run. The fields set by register, Run and serve do
// not change afterwards; the ones marked below belong to the goroutine
// running wait.
type device struct {
	cfg  Config
	log  *slog.Logger
	key  wgtypes.Key
	reg  proto.RegisterResponse
	mesh *mesh.Mesh

	serving // set by serve, released by stop

	// Owned by wait (and stop, after wait has returned).
	state   *State
	written []string // the contexts this run wrote
	// stages are the steps done, for State.Stages; before serve they
	// belong to Run, then to wait.
	stages []Stage
	// askRequestable delivers the clusters the user may request access
	// to (askWhoami) once; nil after updateContexts took them.
	askRequestable chan []string
}

// askWhoami asks the coordinator on a goroutine which clusters the user
// may request access to, for the first updateContexts. A failure is
// logged and leaves the list empty. The returned func cancels the
// question and waits for the goroutine to end.
func (d *device) askWhoami(ctx context.Context) (stop func()) {
	ctx, cancel := context.WithCancel(ctx)
	answer := make(chan []string, 1)
	d.askRequestable = answer
	done := make(chan struct{})
	go func() {
		defer close(done)
		who, err := d.cfg.Coordinator.Whoami(ctx)
		if err != nil && ctx.Err() == nil {
			d.log.Warn("list requestable clusters", "err", err)
		}
		answer <- who.Requestable
	}()
	return func() {
		cancel()
		<-done
	}
}

// stage records that the step name ended now, and logs how long it took.
func (d *device) stage(name string) {
	now := time.Now()
	if n := len(d.stages); n > 0 {
		d.log.Debug("up stage", "stage", name, "took", now.Sub(d.stages[n-1].At))
	}
	d.stages = append(d.stages, Stage{Name: name, At: now, CPU: processCPU()})
}

// processCPU returns the CPU time (user and system) this process has
// used, or zero if the system does not say.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// register makes the device's WireGuard key, stores it in KeyFile, and
// registers the device with the user's session.
func (d *device) register(ctx context.Context) error {
	priv, err := wgtypes.GeneratePrivateKey()
	if err != nil {
		return err
	}
	// The key lives as long as this run: it need not wait for the disk.
	if err := atomicfile.Write(filepath.Join(d.cfg.Dir, KeyFile), []byte(priv.String()+"\n"), 0o600, atomicfile.NoSync); err != nil {
		return fmt.Errorf("store device key: %w", err)
	}
	req := proto.RegisterDeviceRequest{PublicKey: proto.Key(priv.PublicKey()), Hostname: mesh.Hostname()}
	if d.reg, err = d.cfg.Coordinator.RegisterDevice(ctx, req); err != nil {
		return err
	}
	d.key = priv
	return nil
}

// deregister removes the device from the coordinator, so it leaves every
// map at once, and deletes its key.
func (d *device) deregister() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := d.cfg.Coordinator.WithToken(d.reg.NodeToken).Deregister(ctx); err != nil {
		d.log.Warn("deregister device", "err", err)
	}
	os.Remove(filepath.Join(d.cfg.Dir, KeyFile))
}
