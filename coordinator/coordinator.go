// Package coordinator is clustral's control plane. It logs users in through
// OIDC, registers devices and agents, allocates overlay addresses, keeps
// roles and assignments, issues agent certificates from the mesh CA, and
// streams each node its network map. It is never on the data path.
//
// A Server keeps its whole state in memory, indexed for the map
// computations, and writes every change through to its Store before
// acknowledging it.
package coordinator

import (
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"k8s.io/apimachinery/pkg/util/cache"

	"github.com/clustral/clustral/coordinator/auditexport"
	"github.com/clustral/clustral/coordinator/auditlog"
	"github.com/clustral/clustral/coordinator/recordings"
	"github.com/clustral/clustral/coordinator/store"
	"github.com/clustral/clustral/pkg/cork"
	"github.com/clustral/clustral/pkg/keyrate"
	"github.com/clustral/clustral/proto"
)

// Server is a coordinator. Create one with New; it is safe for concurrent
// use. Close stops background work and closes the store; map streams end.
//
// Locks. The fields are grouped by what protects them:
//   - set by New (or before serving) and never changed: read freely;
//   - guarded: the state and the map streams, under the global lock mu;
//   - ckpt: the checkpoint signer's own lock and what it guards;
//   - logins, sources, auditq, failures, relay: each has its own lock
//     inside and needs no other;
//   - atomics.
//
// A method named *Locked, the state's methods, and a method whose doc
// says "called with s.mu held" need mu; a handler takes it itself, once,
// around its whole change. Lock order: mu before a mapClient's, auditq's
// and failures' locks (s.audit may be called with mu held); ckpt before
// the store's write transaction. The relay's lock is never held with mu:
// relay.allowed takes mu only after it let go of the relay's.
type Server struct {
	// Set by New and never changed.
	cfg     Config
	log     *slog.Logger
	store   store.Store
	now     func() time.Time
	started time.Time // s.now() when New began
	ca      *meshCA
	signKey *ecdsa.PrivateKey
	// auditKey signs audit checkpoints; it lives in its own file in the
	// data directory, not in the store (see package auditlog).
	auditKey ed25519.PrivateKey
	// recordings keeps the session recordings agents ship.
	recordings recordings.Store
	v6         netip.Prefix
	oidc       *oidcProvider
	metrics    *metrics
	// export streams the audit log to the configured destinations; nil
	// without any.
	export *auditexport.Exporter
	// timeouts are those of the HTTP servers; set before serving.
	timeouts serverTimeouts
	// testRegisterWritten, set only by tests before serving, runs when a
	// registration's write is durable and before its node is applied to
	// memory (registerNode), where a revocation may land.
	testRegisterWritten func()

	guarded

	// ckpt serializes signing audit checkpoints; last is the record the
	// newest one names.
	ckpt struct {
		sync.Mutex
		last uint64
	}

	// Each with its own lock.
	logins   *loginTable                   // logins waiting for a browser
	sources  *keyrate.Limiters[netip.Addr] // unauthenticated requests by source; nil: no limit
	auditq   auditQueue                    // events without a change of state
	failures failures                      // failed unauthenticated attempts; see auditFailure
	relay    *relay                        // relay connections; its counters are atomic
	live     liveTable                     // the agents' live sessions
	verified *cache.LRUExpireCache         // session token → sessionClaims whose signature checked out (verifySession)

	// Atomic.
	cert atomic.Pointer[tls.Certificate] // served over TLS; see ReloadTLS
	// mapGen counts changes to any node's map (sendUpsert, sendRemove).
	// The relay's cached decisions about who may reach whom are valid only
	// in the generation they were made in.
	mapGen atomic.Uint64
	// certRenew is how often an agent's map stream carries a renewed
	// certificate (a time.Duration; agentCertRenew, shorter in tests).
	certRenew atomic.Int64

	// life owns every goroutine the Server starts; see goOwned and Close.
	life struct {
		sync.Mutex
		closed bool
	}
	stop chan struct{} // closed when Close begins
	// stopCtx ends when Close begins, as stop is closed.
	stopCtx    context.Context
	stopCancel context.CancelFunc
	// replica names this Server among the replicas of a shared store.
	replica string
	// feed is the store's feed when other replicas share it, else nil.
	feed store.Feed
	// replicas links this replica to the others (presence, relay links);
	// nil without a shared store that has a presence register.
	replicas *replicas
	// leader is true while this replica runs the singleton work.
	leader atomic.Bool
	// applied is the store revision this replica's view has applied
	// (follow); see awaitReplicated.
	applied appliedRev
	wg      sync.WaitGroup // the goroutines of goOwned, and Serve while it runs

	// consoleDone is closed (once, endConsoleStreams) when the server
	// stops serving, to end the web console's event streams, which
	// would otherwise hold the HTTP server's Shutdown.
	consoleDone     chan struct{}
	consoleDoneOnce sync.Once
}

// endStreams ends what never finishes on its own: the map streams, the
// relay connections and the web console's event streams. Safe to call
// more than once; it takes s.mu.
func (s *Server) endStreams() {
	s.mu.Lock()
	for _, c := range s.clients {
		c.close()
	}
	s.mu.Unlock()
	s.closeRelays()
	s.endConsoleStreams()
}

// endConsoleStreams ends the web console's open event streams.
func (s *Server) endConsoleStreams() {
	s.consoleDoneOnce.Do(func() { close(s.consoleDone) })
}

// guarded is what the coordinator's global lock mu guards: the in-memory
// state with its indexes, and the open map streams by node id.
//
// Every change but a registration is written through to the store while
// mu is held: a handler takes mu, checks what the change depends on, runs
// the store transaction (commit, expire), and applies the change to
// memory and to the nodes' maps before it lets go. Holding mu through the
// write keeps memory in the order the store committed, and makes a check
// made under mu (a role still existing) hold at the write, so no
// revocation lands between the two. The price is that each such write's
// disk sync holds off every other API call and map computation.
// Registrations, which come in bursts (a fleet of laptops after an
// outage, an agent rollout), do not pay it: registerNode checks and claims
// under mu, writes without it (concurrent registrations share one disk
// sync, the store's group commit), and takes mu again to apply, checking
// the credential once more; its doc says how that keeps the guarantees.
// BenchmarkRegisterNode measures it. Reads of the audit log and the
// request archive (auditlog.Query, archivedRequests) and the audit
// writer's batches run without mu.
type guarded struct {
	mu sync.Mutex
	state
	clients map[string]*mapClient // open map streams by node id
}

// New opens the store (bbolt in cfg.DataDir, or etcd), loads the state and the mesh's keys
// (creating them on first start), and discovers the OIDC provider if one is
// configured.
func New(ctx context.Context, cfg Config) (*Server, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	var st store.Store
	switch cfg.Store {
	case StoreEtcd:
		st, err = store.OpenEtcd(ctx, cfg.Etcd)
	default:
		st, err = store.OpenBolt(filepath.Join(cfg.DataDir, "coordinator.db"))
	}
	if err != nil {
		return nil, err
	}
	s, err := NewWithStore(ctx, cfg, st)
	if err != nil {
		st.Close()
		return nil, err
	}
	return s, nil
}

// NewWithStore is New with a store the caller opened. The Server owns st
// from then on and closes it in Close.
func NewWithStore(ctx context.Context, cfg Config, st store.Store) (*Server, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	s := &Server{
		cfg:      cfg,
		log:      cfg.Logger,
		store:    st,
		now:      cfg.Now,
		logins:   newLoginTable(),
		verified: cache.NewLRUExpireCache(verifiedSessionsMax),
		guarded:  guarded{clients: map[string]*mapClient{}},
		metrics:  newMetrics(),
		stop:     make(chan struct{}),
		replica:  replicaName(),

		consoleDone: make(chan struct{}),
	}
	s.stopCtx, s.stopCancel = context.WithCancel(context.Background())
	s.started = s.now()
	s.timeouts = defaultServerTimeouts
	s.state.init()
	s.certRenew.Store(int64(agentCertRenew))
	s.relay = newRelay(s)
	s.sources = newSourceLimiters(cfg)
	if err := s.loadKeys(); err != nil {
		return nil, err
	}
	s.state.ipam = s.newIPAM()
	// A replica on a shared store follows the other replicas' commits
	// from the revision it loaded at (see follow).
	feed, _ := st.(store.Feed)
	if feed != nil && !feed.Shared() {
		feed = nil
	}
	s.feed = feed
	var rev int64
	if feed != nil {
		rev, err = feed.ViewRev(s.state.load)
	} else {
		err = s.store.View(s.state.load)
	}
	if err != nil {
		return nil, err
	}
	if err := s.archiveEnded(); err != nil {
		return nil, err
	}
	if n, err := indexRequestArchive(s.store); err != nil {
		return nil, err
	} else if n > 0 {
		s.log.Info("indexed the access request archive by request id", "requests", n)
	}
	for login, others := range s.sharedLogins() {
		ids := make([]string, len(others))
		for i, u := range others {
			ids[i] = u.ID
		}
		s.log.Error("several users hold one login, stored before logins were unique: the oldest keeps it, the others cannot log in until an administrator disables them (clustral users disable <id>)",
			"login", login, "holder", s.userByLogin(login).ID, "others", ids)
	}
	if s.recordings = cfg.Recordings; s.recordings == nil {
		dir, err := recordings.NewDir(filepath.Join(cfg.DataDir, "recordings"), cfg.Now)
		if err != nil {
			return nil, err
		}
		s.recordings = dir
		// Replicas keep recordings, and the live parts of running
		// sessions, in the store they share, so that each plays what
		// another took. What this coordinator stored in its directory
		// before it shared its store moves over.
		if feed != nil {
			shared := recordings.NewShared(st, cfg.Now)
			n, err := shared.Import(dir)
			if err != nil {
				return nil, fmt.Errorf("move the recordings of %s into the shared store: %w", dir.Path(), err)
			}
			if n > 0 {
				s.log.Info("recordings moved into the shared store", "recordings", n, "from", dir.Path())
			}
			s.recordings = shared
		}
	}
	if s.auditKey, err = auditlog.LoadKey(cfg.auditKeyPath(), true); err != nil {
		return nil, err
	}
	var last proto.AuditCheckpoint
	if err := s.store.View(func(tx store.Tx) error {
		var err error
		last, err = auditlog.LastCheckpoint(tx)
		return err
	}); err != nil {
		return nil, err
	}
	s.ckpt.last = last.Seq
	if k := proto.AuditKeyID(s.auditKey.Public().(ed25519.PublicKey)); last.Seq != 0 && last.KeyID() != k {
		s.log.Error("the audit checkpoints in the store were signed with another key than "+cfg.auditKeyPath()+" holds: audit verify will report them; restore the key file the store was used with",
			"stored_key", last.KeyID(), "key", k)
	}
	// Whatever the log holds now is signed before anything is added.
	if err := s.checkpointAudit(); err != nil {
		return nil, err
	}
	if cfg.OIDC.Issuer != "" {
		p, err := newOIDCProvider(ctx, cfg.OIDC, cfg.PublicURL+"/oidc/callback")
		if err != nil {
			return nil, err
		}
		s.oidc = p
		if cfg.Allow.empty() {
			s.log.Warn("no allow rule: everyone the identity provider signs in may log in; set --allow-email-domain, --allow-group or --allow-user", "issuer", cfg.OIDC.Issuer)
		}
	}
	if len(cfg.auditExport) > 0 {
		s.export, err = auditexport.New(auditexport.Config{Store: st, Destinations: cfg.auditExport, Logger: s.log,
			Registerer: s.metrics.reg, Audit: s.audit, Now: s.now, Poll: cfg.AuditExportPoll})
		if err != nil {
			return nil, err
		}
	}
	if feed != nil {
		s.goOwned(func() { s.follow(feed, rev) })
		if p, ok := st.(store.Presence); ok {
			if s.replicas, err = s.newReplicas(p); err != nil {
				return nil, err
			}
		}
	}
	s.goOwned(s.janitor)
	// Of several replicas, one exports the audit log, or each record
	// would reach the destinations once per replica.
	s.singleton(feed, func(ctx context.Context) {
		var wg sync.WaitGroup
		wg.Go(func() { s.expirer(ctx) })
		wg.Go(func() { s.auditJanitor(ctx) })
		wg.Go(func() { s.recordingJanitor(ctx) })
		wg.Go(func() { s.liveRecordingJanitor(ctx) })
		wg.Go(func() { s.auditIndexer(ctx) })
		wg.Go(func() { s.auditSigner(ctx) })
		if s.export != nil {
			wg.Go(func() { s.export.Run(ctx) })
		}
		wg.Wait()
	})
	if feed != nil {
		s.goOwned(func() { s.touchAgents(s.stopCtx) })
	}
	s.goOwned(s.auditWriter)
	return s, nil
}

// goOwned runs f in a goroutine that Close waits for. Once Close has
// begun it runs nothing and returns false. f must return soon after
// s.stop is closed.
func (s *Server) goOwned(f func()) bool {
	if !s.enter() {
		return false
	}
	go func() {
		defer s.wg.Done()
		f()
	}()
	return true
}

// enter counts the caller in s.wg, which Close waits for, unless Close
// has begun; then it returns false. A caller that entered calls s.wg.Done
// when it is done.
func (s *Server) enter() bool {
	s.life.Lock()
	defer s.life.Unlock()
	if s.life.closed {
		return false
	}
	s.wg.Add(1)
	return true
}

// Config returns the effective configuration.
func (s *Server) Config() Config { return s.cfg }

// Close stops the server's background work, ends every map stream and
// relay connection, stops what Serve and ListenAndServe serve, waits for
// every goroutine the Server started (the janitors, the audit writer and
// signer, the HTTP servers, endpoint discovery, the relay's connections),
// and closes the store. Calls after the first return nil.
func (s *Server) Close() error {
	s.life.Lock()
	if s.life.closed {
		s.life.Unlock()
		return nil
	}
	s.life.closed = true
	s.life.Unlock()
	// Store every count of failures, closed window or not.
	s.flushFailures(s.now().Add(failureWindow))
	close(s.stop)
	s.stopCancel()
	s.endStreams()
	s.wg.Wait()
	// The audit writer has stored what was queued: sign the log as it is
	// left.
	if err := s.checkpointAudit(); err != nil {
		s.log.Error("audit checkpoint at close", "err", err)
	}
	return s.store.Close()
}

// ListenAndServe serves the API on cfg.Listen, the ops routes on
// cfg.MetricsListen if set, and endpoint discovery on cfg.STUNListen (see
// Config) until ctx is done or Close is called, then shuts them down
// gracefully and returns once all of them have stopped. ready, if not nil,
// is called with the API's bound address.
func (s *Server) ListenAndServe(ctx context.Context, ready func(net.Addr)) error {
	l, err := net.Listen("tcp", s.cfg.Listen)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", s.cfg.Listen, err)
	}
	ctx, cancel := context.WithCancel(ctx)
	// What this call starts beside Serve is owned by the Server (Close
	// waits for it) and by this call (it returns once that has stopped).
	var wg sync.WaitGroup
	start := func(f func()) bool {
		wg.Add(1)
		if !s.goOwned(func() { defer wg.Done(); f() }) {
			wg.Done()
			return false
		}
		return true
	}
	defer wg.Wait()
	defer cancel()
	if s.cfg.MetricsListen != "" {
		ml, err := net.Listen("tcp", s.cfg.MetricsListen)
		if err != nil {
			l.Close()
			return fmt.Errorf("listen on %s for metrics: %w", s.cfg.MetricsListen, err)
		}
		ops := s.httpServer(s.OpsHandler())
		if !start(func() { ops.Serve(ml) }) {
			ml.Close()
		}
		defer ops.Close()
		s.log.Info("metrics listening", "addr", ml.Addr().String())
	}
	pc, err := s.listenSTUN()
	if err != nil {
		l.Close()
		return err
	}
	if pc != nil && !start(func() {
		if err := s.ServeSTUN(ctx, pc); err != nil {
			s.log.Error("endpoint discovery stopped", "err", err)
		}
	}) {
		pc.Close()
	}
	if s.cfg.ReplicaListen == "" && s.replicas != nil {
		s.log.Warn("no --replica-listen: the other replicas cannot forward relayed datagrams to the nodes on this one, which then reach through the relay only nodes on this replica")
	}
	if s.cfg.ReplicaListen != "" {
		rl, err := net.Listen("tcp", s.cfg.ReplicaListen)
		if err != nil {
			l.Close()
			return fmt.Errorf("listen on %s for the other replicas (--replica-listen): %w", s.cfg.ReplicaListen, err)
		}
		if !start(func() {
			if err := s.ServeReplicas(rl, s.cfg.ReplicaAdvertise); err != nil {
				s.log.Error("replica links stopped: nodes reach only the nodes on this replica through the relay", "err", err)
			}
		}) {
			rl.Close()
		}
	}
	if ready != nil {
		ready(l.Addr())
	}
	return s.Serve(ctx, l)
}

// serverTimeouts bound each part of an HTTP connection's life on the
// coordinator's servers, so that no unauthenticated client can hold a
// connection (and its goroutine) open by sending or reading slowly:
// readHeader for the request's headers, read for the whole request with
// its body, write for the answer, idle for a keep-alive connection between
// requests. The routes that live long (the map stream, the relay, the
// backup) lift them for themselves once the caller is authenticated.
type serverTimeouts struct {
	readHeader, read, write, idle time.Duration
}

var defaultServerTimeouts = serverTimeouts{
	readHeader: 10 * time.Second,
	read:       30 * time.Second,
	write:      60 * time.Second,
	idle:       2 * time.Minute,
}

// httpServer is an HTTP server for h with the coordinator's timeouts and
// its logger for connection errors.
func (s *Server) httpServer(h http.Handler) *http.Server {
	return &http.Server{
		Handler:           h,
		ReadHeaderTimeout: s.timeouts.readHeader,
		ReadTimeout:       s.timeouts.read,
		WriteTimeout:      s.timeouts.write,
		IdleTimeout:       s.timeouts.idle,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
	}
}

// longLived lifts the server's read deadline from the connection of an
// authenticated request that streams for longer than serverTimeouts
// allow, and returns a function that gives the next write of its answer
// its own deadline (the server's write timeout from now). A stream whose
// reader stops reading thus still fails, one write timeout later.
func (s *Server) longLived(w http.ResponseWriter) (extendWrite func()) {
	rc := http.NewResponseController(w)
	if err := rc.SetReadDeadline(time.Time{}); err != nil && !errors.Is(err, http.ErrNotSupported) {
		s.log.Debug("lift read deadline", "err", err)
	}
	return func() {
		if s.timeouts.write > 0 {
			rc.SetWriteDeadline(time.Now().Add(s.timeouts.write))
		}
	}
}

// apiListener returns l as the API server accepts from it: each
// connection a cork.Conn, for relay connections to cork under TLS
// (relay.write), and under TLS with cfg unless cfg is nil.
func apiListener(l net.Listener, cfg *tls.Config) net.Listener {
	l = cork.Listener{Listener: l}
	if cfg != nil {
		l = tls.NewListener(l, cfg)
	}
	return l
}

// Serve serves the API on l until ctx is done or Close is called, then
// ends the map streams and relay connections, shuts the HTTP server down
// gracefully (waiting up to 10 s for requests in flight) and returns once
// it has stopped. Close waits for Serve to return.
func (s *Server) Serve(ctx context.Context, l net.Listener) error {
	if !s.enter() {
		l.Close()
		return http.ErrServerClosed
	}
	defer s.wg.Done()
	srv := s.httpServer(s.Handler())
	var tlsConfig *tls.Config
	if s.cfg.TLSCertFile != "" {
		if s.cert.Load() == nil {
			cert, err := s.loadTLS()
			if err != nil {
				l.Close()
				return err
			}
			s.cert.CompareAndSwap(nil, cert)
		}
		tlsConfig = &tls.Config{GetCertificate: s.getCertificate, MinVersion: tls.VersionTLS12}
		srv.TLSConfig = tlsConfig
	}
	l = apiListener(l, tlsConfig)
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(l) }()
	s.log.Info("coordinator listening", "addr", l.Addr().String(), "public_url", s.cfg.PublicURL)
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	case <-s.stop:
	}
	// Map streams and relay connections never finish on their own; end
	// them first.
	s.endStreams()
	sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err := srv.Shutdown(sctx)
	if err != nil {
		srv.Close()
	}
	<-errc // srv.Serve has returned ErrServerClosed
	if err != nil {
		return fmt.Errorf("shutdown: %w", err)
	}
	return nil
}

// ReloadTLS reads the TLS certificate and key files again and serves the
// new pair to every handshake from now on; connections already open keep
// the certificate they negotiated. If the files do not hold a valid pair,
// the current certificate stays in use and the error is returned. It is
// safe to call at any time, for example on SIGHUP, and does nothing
// without TLS configured.
func (s *Server) ReloadTLS() error {
	if s.cfg.TLSCertFile == "" {
		return nil
	}
	cert, err := s.loadTLS()
	if err == nil && s.now().After(cert.Leaf.NotAfter) {
		// Never trade a working certificate for an expired one.
		err = fmt.Errorf("TLS certificate %s expired at %s", s.cfg.TLSCertFile, cert.Leaf.NotAfter.UTC().Format(time.RFC3339))
	}
	if err != nil {
		s.log.Error("TLS certificate not reloaded; still serving the previous one", "err", err)
		return err
	}
	s.cert.Store(cert)
	s.log.Info("TLS certificate reloaded", "subject", cert.Leaf.Subject.String(),
		"not_after", cert.Leaf.NotAfter, "serial", cert.Leaf.SerialNumber.Text(16))
	return nil
}

// loadTLS reads and checks the configured certificate and key.
func (s *Server) loadTLS() (*tls.Certificate, error) {
	cert, err := tls.LoadX509KeyPair(s.cfg.TLSCertFile, s.cfg.TLSKeyFile)
	if err != nil {
		return nil, fmt.Errorf("load TLS certificate %s: %w", s.cfg.TLSCertFile, err)
	}
	if cert.Leaf == nil {
		if cert.Leaf, err = x509.ParseCertificate(cert.Certificate[0]); err != nil {
			return nil, fmt.Errorf("parse TLS certificate %s: %w", s.cfg.TLSCertFile, err)
		}
	}
	return &cert, nil
}

func (s *Server) getCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	return s.cert.Load(), nil
}

const (
	metaSessionKey = "session_key"
	metaCA         = "mesh_ca"
	metaIPv6       = "ipv6_prefix"
)

// loadKeys loads the session signing key, the mesh CA and the IPv6 prefix,
// creating them on first start.
func (s *Server) loadKeys() error {
	return s.store.Update(func(tx store.Tx) error {
		raw, err := tx.GetRaw(store.Meta, metaSessionKey)
		switch {
		case errors.Is(err, store.ErrNotFound):
			k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
			if err != nil {
				return err
			}
			der, err := x509.MarshalPKCS8PrivateKey(k)
			if err != nil {
				return err
			}
			if err := tx.PutRaw(store.Meta, metaSessionKey, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})); err != nil {
				return err
			}
			s.signKey = k
		case err != nil:
			return err
		default:
			b, _ := pem.Decode(raw)
			if b == nil {
				return errors.New("session key in store is not PEM")
			}
			k, err := x509.ParsePKCS8PrivateKey(b.Bytes)
			if err != nil {
				return fmt.Errorf("session key: %w", err)
			}
			ek, ok := k.(*ecdsa.PrivateKey)
			if !ok {
				return errors.New("session key is not ECDSA")
			}
			s.signKey = ek
		}

		raw, err = tx.GetRaw(store.Meta, metaIPv6)
		switch {
		case errors.Is(err, store.ErrNotFound):
			p := s.cfg.IPv6Prefix
			if !p.IsValid() {
				p = randomULA()
			}
			if err := tx.PutRaw(store.Meta, metaIPv6, []byte(p.String())); err != nil {
				return err
			}
			s.v6 = p
		case err != nil:
			return err
		default:
			p, err := netip.ParsePrefix(string(raw))
			if err != nil {
				return fmt.Errorf("stored IPv6 prefix: %w", err)
			}
			if s.cfg.IPv6Prefix.IsValid() && s.cfg.IPv6Prefix != p {
				return fmt.Errorf("configured IPv6 prefix %s differs from the mesh's %s: remove the setting or migrate the mesh", s.cfg.IPv6Prefix, p)
			}
			s.v6 = p
		}
		// The CA is constrained to the mesh domain and both overlay
		// prefixes, so it comes after the IPv6 prefix.
		prefixes := []netip.Prefix{s.cfg.IPv4Prefix, s.v6}
		raw, err = tx.GetRaw(store.Meta, metaCA)
		switch {
		case errors.Is(err, store.ErrNotFound):
			ca, stored, err := newMeshCA(s.now(), s.cfg.MeshDomain, prefixes)
			if err != nil {
				return fmt.Errorf("create mesh CA: %w", err)
			}
			if err := tx.PutRaw(store.Meta, metaCA, stored); err != nil {
				return err
			}
			s.ca = ca
		case err != nil:
			return err
		default:
			ca, err := loadMeshCA(raw)
			if err != nil {
				return err
			}
			ca, stored, err := ca.constrain(s.now(), s.cfg.MeshDomain, prefixes)
			if err != nil {
				return err
			}
			if stored != nil {
				s.log.Info("mesh CA certificate re-signed with name constraints", "domain", s.cfg.MeshDomain, "prefixes", prefixes)
				if err := tx.PutRaw(store.Meta, metaCA, stored); err != nil {
					return err
				}
			}
			s.ca = ca
		}
		return nil
	})
}

// load reads every record of tx into st, whose ipam is set and whose
// maps are empty.
func (st *state) load(tx store.Tx) error {
	for _, load := range []func(store.Tx) error{
		st.ipam.loadAddresses,
		loadAll(store.Users, st.indexUser),
		loadAll(store.Sessions, func(se *session) { st.sessions[se.IDHash] = se }),
		loadAll(store.Clusters, st.indexCluster),
		loadAll(store.Roles, st.indexRole),
		loadAll(store.Assignments, st.indexAssignment),
		loadAll(store.Requests, func(ar *accessRequest) { st.requests[ar.ID] = ar }),
		loadAll(store.Nodes, st.indexNode),
	} {
		if err := load(tx); err != nil {
			return err
		}
	}
	return nil
}

// loadAll returns a loader that lists every record of bucket b and hands
// each to put, in the store's order.
func loadAll[T any](b store.Bucket, put func(*T)) func(store.Tx) error {
	return func(tx store.Tx) error {
		vs, err := store.List[T](tx, b)
		if err != nil {
			return err
		}
		for i := range vs {
			put(&vs[i])
		}
		return nil
	}
}

// recordChange appends the audit event of an administrative change inside
// tx, so that the change and its record commit together. Called with s.mu
// held.
// putChange returns a transaction that stores v as the record id of
// bucket b and records the change action on id, with detail, by actor
// (recordChange).
func (s *Server) putChange(b store.Bucket, id string, v any, actor, action string, detail any) func(store.Tx) error {
	return func(tx store.Tx) error {
		if err := store.Put(tx, b, id, v); err != nil {
			return err
		}
		return s.recordChange(tx, actor, action, id, detail)
	}
}

func (s *Server) recordChange(tx store.Tx, actor, action, object string, detail any) error {
	e, err := s.changeEvent(actor, action, object, detail)
	if err != nil {
		return err
	}
	_, err = auditlog.Append(tx, e)
	return err
}

// janitor forgets expired pending logins and idle rate limiters, and
// audits the failures counted; each replica does this for its own.
func (s *Server) janitor() {
	s.every(s.stopCtx, time.Second, func() {
		s.sweepLogins()
		s.agentsGone()
		if s.sources != nil {
			s.sources.Evict(s.now())
		}
		s.flushFailures(s.now())
	})
}

// agentsGone takes the agents whose map stream has been closed for
// AgentGrace out of their users' devices' maps, so a dead agent is no
// longer dialed; an agent that has not connected since this coordinator
// started gets AgentGrace from the start. Its stream's return puts it
// back (mapStream). An agent registered since is in no map until its
// stream opens (registerNode).
//
// With replicas an agent may stream from any of them: each announces the
// agents streaming from it (replicas.go), and each takes out of its own
// devices' maps the agents that stream from none. A replica on a shared
// store without a presence register knows only its own streams, so it
// leaves agents in the maps until AgentTTL, and devices skip a dead one
// by dialing the next (node/mesh).
func (s *Server) agentsGone() {
	if s.feed != nil && s.replicas == nil {
		return
	}
	now := s.now()
	s.mu.Lock()
	defer s.mu.Unlock()
	for cid, agents := range s.agentsByCluster {
		for _, a := range agents {
			if s.online[a.ID] > 0 || s.gone[a.ID] || s.replicas.streamingElsewhere(a.ID) {
				continue
			}
			since := a.LastSeen
			if since.Before(s.started) {
				since = s.started
			}
			if s.replicas != nil && s.replicas.offSince[a.ID].After(since) {
				since = s.replicas.offSince[a.ID]
			}
			if now.Sub(since) < s.cfg.AgentGrace {
				continue
			}
			s.gone[a.ID] = true
			if s.replicas != nil {
				delete(s.replicas.offSince, a.ID)
			}
			for _, u := range s.usersOn(cid, now) {
				for _, d := range s.devicesByUser[u.ID] {
					s.sendRemove(d, a.Key)
				}
			}
			s.log.Info("agent left its users' maps: its map stream is closed", "node", a.ID, "since", since)
		}
	}
}

// expirer expires sessions, devices, assignments and access requests, and
// reclaims agents that have been gone for AgentTTL, until ctx ends. It is
// singleton work (see singleton).
func (s *Server) expirer(ctx context.Context) {
	s.every(ctx, time.Second, func() {
		if err := s.expire(); err != nil {
			s.log.Error("expire", "err", err)
		}
	})
}

// every calls f each interval d until ctx ends. It runs on the goroutine
// that calls it (see goOwned).
func (s *Server) every(ctx context.Context, d time.Duration, f func()) {
	t := time.NewTicker(d)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			f()
		}
	}
}

func (s *Server) expire() error {
	now := s.now()
	s.mu.Lock()
	defer s.mu.Unlock()
	var sessions []string
	for h, se := range s.sessions {
		if !now.Before(se.Expires) {
			sessions = append(sessions, h)
		}
	}
	var nodes []*node
	for _, n := range s.nodes {
		switch {
		case n.Kind == proto.KindDevice && !n.Expires.IsZero() && !now.Before(n.Expires):
			nodes = append(nodes, n)
		case n.Kind == proto.KindAgent && s.online[n.ID] == 0 && now.Sub(n.LastSeen) > s.cfg.AgentTTL:
			nodes = append(nodes, n)
		}
	}
	var asg []*assignment
	for _, a := range s.assignments {
		if !a.activeAt(now) {
			asg = append(asg, a)
		}
	}
	pendingExpiry := false
	for _, ar := range s.requests {
		if ar.State == proto.RequestPending && !now.Before(ar.PendingUntil) ||
			ar.State == proto.RequestApproved && ar.GrantExpires != nil && !now.Before(*ar.GrantExpires) {
			pendingExpiry = true
			break
		}
	}
	if len(sessions)+len(nodes)+len(asg) == 0 && !pendingExpiry {
		return nil
	}
	var expiredReqs []*accessRequest
	err := s.store.Update(func(tx store.Tx) error {
		var err error
		if expiredReqs, err = s.expireRequestsLocked(tx, now); err != nil {
			return err
		}
		if err := deleteSessions(tx, sessions); err != nil {
			return err
		}
		if err := deleteNodes(tx, nodes); err != nil {
			return err
		}
		for _, a := range asg {
			if err := tx.Delete(store.Assignments, a.ID); err != nil {
				return err
			}
			if err := s.recordChange(tx, "system", "assignment.expired", a.ID, nil); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	for _, ar := range expiredReqs {
		s.setRequestLocked(ar)
	}
	for _, h := range sessions {
		delete(s.sessions, h)
	}
	for _, n := range nodes {
		s.log.Info("node expired", "node", n.ID, "kind", n.Kind)
		s.removeNodeAndSyncLocked(n)
	}
	for _, a := range asg {
		s.removeAssignmentAndSyncLocked(a)
	}
	return nil
}

// ---- small helpers ----

// newID returns the identifier of a new object: Config.NewID's, or a
// random one, which for a node ("dev", "agt") leads with the time
// (newNodeID).
func (s *Server) newID(prefix string) string {
	switch {
	case s.cfg.NewID != nil:
		return s.cfg.NewID(prefix)
	case prefix == "dev" || prefix == "agt":
		return newNodeID(prefix, s.now())
	}
	return newID(prefix)
}

// newNodeID returns the identifier of a node registered at now: now's
// Unix milliseconds in 12 hex digits, then 80 random bits as newID's,
// e.g. "dev_019ae3c2f1a0" and 20 more digits. Nodes registered one after
// another thus have neighbouring keys in the store's Nodes bucket, so a
// burst of registrations writes a page or two of it, not a page each.
// (When a node was registered is no secret: its Created says so.)
func newNodeID(prefix string, now time.Time) string {
	var b [16]byte
	binary.BigEndian.PutUint64(b[:8], uint64(now.UnixMilli())<<16)
	rand.Read(b[6:])
	return prefix + "_" + hex.EncodeToString(b[:])
}

// newID returns a random identifier with a type prefix, e.g. "usr_3f9c…".
func newID(prefix string) string {
	var b [10]byte
	rand.Read(b[:])
	return prefix + "_" + hex.EncodeToString(b[:])
}

// newSecret returns a random 256-bit secret, URL-safe base64.
func newSecret(prefix string) string {
	var b [32]byte
	rand.Read(b[:])
	return prefix + base64.RawURLEncoding.EncodeToString(b[:])
}

// hashSecret is how secrets are stored: a SHA-256 hex digest. The secrets
// are 256-bit random values, so a fast hash is enough.
func hashSecret(s string) string {
	h := sha256.Sum256([]byte(s))
	return hex.EncodeToString(h[:])
}
