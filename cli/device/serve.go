package device

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/clustral/clustral/cli/kubeconfig"
	"github.com/clustral/clustral/netstack/socks5"
	"github.com/clustral/clustral/node"
	"github.com/clustral/clustral/node/mesh"
	"github.com/clustral/clustral/pkg/atomicfile"
)

// serving is what serve starts and stop releases. stop waits for every
// goroutine in wg.
type serving struct {
	socks       *socks5.Server
	deny        *denier
	proxy       *url.URL          // the SOCKS5 proxy, with its credential
	kw          kubeconfig.Writer // the kubeconfig the contexts go to
	requestable []string          // clusters the user may request access to, once asked

	published atomic.Pointer[State] // the last state wait published
	changes   chan node.Change      // map changes, for wait
	unwatch   func()                // ends the map-change subscription
	ctxReqs   chan contextRequest   // status socket requests, for wait
	control   *http.Server          // the status socket's server

	streamErr  chan error // the map stream's end
	stopStream context.CancelFunc
	relayAt    atomic.Int64 // when the relay first connected (Unix ns), for StageRelay

	// The mesh DNS (--tun): what the system's resolver was told, and
	// the server's end; nil if off.
	dnsState      *DNSState
	stopDNSServer context.CancelFunc

	wg sync.WaitGroup // the goroutines serve started
}

// serve starts the map stream, the SOCKS5 proxy, the mesh DNS in TUN
// mode, the state and the status socket. On error it has released what
// it started.
func (d *device) serve(ctx context.Context) (err error) {
	defer func() {
		if err != nil {
			d.stop()
		}
	}()
	// The map stream first: it waits for the relay's first connection,
	// which takes longer than the rest. Its changes wait in d.changes
	// until wait takes them.
	d.watchMap()
	d.runMapStream(ctx)
	if err := d.serveSOCKS(ctx); err != nil {
		return err
	}
	if d.cfg.TUN && d.cfg.DNS != "" && d.cfg.DNS != DNSOff {
		if err := d.serveDNS(ctx); err != nil {
			return err
		}
	}
	d.initState()
	if err := d.serveControl(); err != nil {
		return err
	}
	d.log.Info("joining the mesh", "coordinator", d.cfg.Coordinator.BaseURL(), "addresses", d.state.Addresses, "socks", d.state.SOCKS)
	return nil
}

// serveSOCKS serves the loopback SOCKS5 proxy with a fresh credential.
// Connections to a cluster the user may not reach get a local denial.
func (d *device) serveSOCKS(ctx context.Context) error {
	user, pass := "clustral", rand.Text()
	sl, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(d.cfg.SOCKSPort)))
	if err != nil {
		return fmt.Errorf("listen for SOCKS5 on 127.0.0.1:%d: %w (pick another --socks-port)", d.cfg.SOCKSPort, err)
	}
	ttl := 24 * time.Hour
	if !d.reg.ExpiresAt.IsZero() {
		ttl = time.Until(d.reg.ExpiresAt) + time.Hour
	}
	if d.deny, err = newDenier(d.cfg.User, d.reg.MeshDomain, ttl); err != nil {
		sl.Close()
		return err
	}
	d.socks = newSOCKSServer(user, pass, d.mesh, d.deny.conn, d.log)
	d.wg.Go(func() { d.socks.Serve(sl) })
	d.proxy = &url.URL{Scheme: "socks5", User: url.UserPassword(user, pass), Host: sl.Addr().String()}
	return nil
}

// initState makes the device's state, "starting", and publishes it.
func (d *device) initState() {
	d.kw = kubeconfig.Writer{Path: d.cfg.Kubeconfig}
	pass, _ := d.proxy.User.Password()
	d.state = &State{
		PID: os.Getpid(), Status: "starting", Coordinator: d.cfg.Coordinator.BaseURL(), User: d.cfg.User,
		NodeID: d.reg.NodeID, SOCKS: d.proxy.Host, Kubeconfig: d.kw.File(), Started: time.Now(),
		SOCKSUser: d.proxy.User.Username(), SOCKSPass: pass, Expires: d.reg.ExpiresAt, DNS: d.dnsState,
	}
	for _, a := range d.reg.Addresses {
		d.state.Addresses = append(d.state.Addresses, a.Addr().String())
	}
	d.kw.Tightened = func(file string, was fs.FileMode) {
		d.log.Warn("kubeconfig made mode 0600: it now holds the SOCKS proxy credential", "file", file, "was", fmt.Sprintf("%04o", was))
		d.state.KubeconfigWas = fmt.Sprintf("%04o", was)
	}
	d.publish()
}

// watchMap hands the node's map changes to wait, dropping them while
// wait is busy: it looks at the whole map each time.
func (d *device) watchMap() {
	d.changes = make(chan node.Change, 16)
	d.unwatch = d.mesh.Node.OnChange(func(ch node.Change) {
		select {
		case d.changes <- ch:
		default:
		}
	})
}

// runMapStream runs the mesh's map stream, with its relay and discovery,
// on a goroutine until stop; its end goes to wait.
func (d *device) runMapStream(ctx context.Context) {
	ctx, cancel := context.WithCancel(ctx)
	d.stopStream = cancel
	d.streamErr = make(chan error, 1)
	coord := mesh.Coordinator{
		Client: d.cfg.Coordinator.WithToken(d.reg.NodeToken), RelayClient: d.cfg.RelayClient,
		RelayFirst: func() { d.relayAt.Store(time.Now().UnixNano()) },
	}
	d.wg.Go(func() { d.streamErr <- d.mesh.Run(ctx, coord) })
}

// stop releases what serve started, in this order: the status socket,
// the map stream, the system's resolver change and the mesh DNS, the
// kubeconfig contexts, the state file, the SOCKS5 proxy and its
// connections, the denials; then it waits for every goroutine serve
// started. It runs after wait has returned.
func (d *device) stop() {
	if d.control != nil {
		d.control.Close()
		os.Remove(filepath.Join(d.cfg.Dir, SocketFile))
	}
	if d.stopStream != nil {
		d.stopStream()
	}
	d.stopDNS()
	if len(d.written) > 0 {
		if err := d.kw.Set(nil, d.written); err != nil {
			d.log.Error("remove kubeconfig contexts", "err", err)
		}
	}
	if d.unwatch != nil {
		d.unwatch()
	}
	if d.state != nil {
		os.Remove(filepath.Join(d.cfg.Dir, StateFile))
	}
	if d.socks != nil {
		d.socks.Close()
	}
	if d.deny != nil {
		d.deny.Close()
	}
	d.wg.Wait()
}

// wait serves map changes and the status socket's context requests until
// ctx is done (nil) or the map stream fails (its error).
func (d *device) wait(ctx context.Context) error {
	for {
		select {
		case <-ctx.Done():
			d.log.Info("shutting down")
			return nil
		case err := <-d.streamErr:
			if ctx.Err() != nil {
				return nil
			}
			return err
		case req := <-d.ctxReqs:
			err := SetExcluded(d.cfg.Dir, req.cluster, !req.add)
			if err == nil {
				err = d.updateContexts()
			}
			req.reply <- contextReply{slices.Clone(d.state.Contexts), err}
		case ch := <-d.changes:
			if ch.Snapshot || len(ch.ClustersAdded)+len(ch.ClustersRemoved) > 0 || ch.SelfChanged || d.state.Status != "connected" {
				// The first snapshot; a failed kubeconfig write
				// leaves the status, and the next change tries again.
				if d.state.Status != "connected" && !slices.ContainsFunc(d.stages, func(s Stage) bool { return s.Name == StageSnapshot }) {
					if at := d.relayAt.Load(); at != 0 {
						d.stages = append(d.stages, Stage{Name: StageRelay, At: time.Unix(0, at)})
					}
					d.stage(StageSnapshot)
				}
				d.updateContexts()
			}
		}
	}
}

// updateContexts writes one kubeconfig context for each cluster in the
// map or open to an access request, less those clustral kube logout
// excluded (KubePrefsFile), and removes the ones it wrote before that are
// no longer wanted. Then the device is connected: it publishes its state
// and writes StateFile.
func (d *device) updateContexts() error {
	var want []kubeconfig.Context
	var names []string
	if d.askRequestable != nil {
		d.requestable = <-d.askRequestable
		d.askRequestable = nil
	}
	clusters := d.mesh.Node.Clusters()
	for _, cl := range d.requestable {
		if !slices.Contains(clusters, cl) {
			clusters = append(clusters, cl)
		}
	}
	slices.Sort(clusters)
	excluded := Excluded(d.cfg.Dir)
	clusters = slices.DeleteFunc(clusters, func(cl string) bool { return slices.Contains(excluded, cl) })
	ca := append([]byte(d.mesh.Node.CABundle()), d.deny.caPEM...)
	for _, cl := range clusters {
		want = append(want, kubeconfig.Context{Cluster: cl, Server: "https://" + cl + "." + d.mesh.Node.MeshDomain(), CA: ca, Proxy: d.proxy, Login: d.cfg.User})
		names = append(names, kubeconfig.ContextName(cl))
	}
	var remove []string
	for _, w := range d.written {
		if !slices.Contains(names, w) {
			remove = append(remove, w)
		}
	}
	if err := d.kw.Set(want, remove); err != nil {
		d.log.Error("update kubeconfig", "err", err)
		return err
	}
	d.written = names
	d.state.Contexts = names
	if d.state.Status != "connected" {
		d.stage(StageConnected)
		d.state.Stages = slices.Clone(d.stages)
	}
	d.state.Status = "connected"
	d.publish()
	// The state describes this process: it need not wait for the disk.
	if err := atomicfile.WriteJSON(filepath.Join(d.cfg.Dir, StateFile), d.state, 0o600, atomicfile.NoSync); err != nil {
		d.log.Error("write state", "err", err)
		return err
	}
	if d.cfg.Connected != nil {
		d.cfg.Connected()
		d.cfg.Connected = nil
	}
	return nil
}

// publish hands a copy of the state to the status socket, which must not
// read the live one wait owns.
func (d *device) publish() {
	c := *d.state
	c.Contexts = slices.Clone(d.state.Contexts)
	d.published.Store(&c)
}

// newSOCKSServer returns the loopback SOCKS5 server of a device: one
// per-session credential, and every CONNECT dialled through the mesh. A
// connection to a cluster the user may not reach goes to deny, if set,
// which answers kubectl with a plain-text 403 saying so.
func newSOCKSServer(user, pass string, m *mesh.Mesh, deny func(cluster string) net.Conn, log *slog.Logger) *socks5.Server {
	return &socks5.Server{
		Username: user,
		Password: pass,
		Logger:   log,
		Dial: func(ctx context.Context, network, host string, port uint16) (net.Conn, error) {
			c, err := m.DialCluster(ctx, host, port)
			var na *mesh.NoAgentError
			if errors.As(err, &na) && deny != nil {
				return deny(na.Cluster), nil
			}
			return c, err
		},
	}
}
