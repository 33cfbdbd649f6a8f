// Package store runs the store conformance suite against real etcd (one
// member, three members on loopback, and with client TLS) and tests the
// etcd store's configuration errors and restore.
package store

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/clustral/clustral/coordinator/auditlog"
	"github.com/clustral/clustral/coordinator/auditlog/audittest"
	"github.com/clustral/clustral/coordinator/store"
	"github.com/clustral/clustral/coordinator/store/storetest"
	"github.com/clustral/clustral/integration/harness"
	"github.com/clustral/clustral/pkg/testkit"
	"github.com/clustral/clustral/proto"
)

// openOn returns an opener of stores on endpoints, each under its own
// key prefix so the subtests start empty.
func openOn(endpoints []string) func(t *testing.T) store.Store {
	var n atomic.Int64
	return func(t *testing.T) store.Store {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		s := openEtcd(ctx, t, store.EtcdConfig{
			Endpoints: endpoints,
			Prefix:    fmt.Sprintf("/clustral-test/%d", n.Add(1)),
		})
		return s
	}
}

func TestEtcdConformance(t *testing.T) {
	e := startEtcd(t)
	storetest.Run(t, openOn([]string{e.URL}))
}

func TestEtcdClusterConformance(t *testing.T) {
	c := startEtcdCluster(t, 3)
	storetest.Run(t, openOn(c.URLs))
}

// feedOn returns the options of the feed suite on etcd endpoints: a
// compaction through a client of its own, and a replica as a second
// store on the same prefix.
func feedOn(t *testing.T, endpoints []string) storetest.FeedOptions {
	t.Helper()
	cli, err := clientv3.New(clientv3.Config{Endpoints: endpoints, DialTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	return storetest.FeedOptions{
		Compact: func(t *testing.T, f store.Feed) {
			resp, err := cli.Get(t.Context(), "/")
			if err != nil {
				t.Fatal(err)
			}
			if _, err := cli.Compact(t.Context(), resp.Header.Revision); err != nil {
				t.Fatal(err)
			}
		},
		Replica: func(t *testing.T, f store.Feed) store.Feed {
			s := openEtcd(t.Context(), t, store.EtcdConfig{Endpoints: endpoints, Prefix: f.(*store.Etcd).Prefix()})
			return s
		},
	}
}

// onOneAndThree runs f in a subtest against one etcd member and in
// another against a three-member cluster.
func onOneAndThree(t *testing.T, f func(t *testing.T, urls []string)) {
	e := startEtcd(t)
	c := startEtcdCluster(t, 3)
	for name, urls := range map[string][]string{"one": {e.URL}, "three": c.URLs} {
		t.Run(name, func(t *testing.T) { f(t, urls) })
	}
}

// TestEtcdFeed runs the feed suite on one member and on three.
func TestEtcdFeed(t *testing.T) {
	onOneAndThree(t, func(t *testing.T, urls []string) {
		open := openOn(urls)
		storetest.RunFeed(t, func(t *testing.T) store.Feed { return open(t).(store.Feed) }, feedOn(t, urls))
	})
}

// TestEtcdOpenErrors: a store that cannot reach etcd, or is configured
// wrongly, says which setting to fix.
func TestEtcdOpenErrors(t *testing.T) {
	port, err := harness.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	missing := t.TempDir() + "/missing.pem"
	tests := []struct {
		name string
		cfg  store.EtcdConfig
		want string
	}{
		{"no endpoint", store.EtcdConfig{}, "--etcd-endpoints"},
		{"not a URL", store.EtcdConfig{Endpoints: []string{"etcd:2379"}}, "scheme://host:port"},
		{"no port", store.EtcdConfig{Endpoints: []string{"https://etcd"}}, "scheme://host:port"},
		{"mixed schemes", store.EtcdConfig{Endpoints: []string{"https://127.0.0.1:2379", "http://127.0.0.1:2380"}}, "different schemes"},
		{"cert without key", store.EtcdConfig{Endpoints: []string{"https://127.0.0.1:2379"}, CertFile: missing}, "--etcd-key"},
		{"missing CA", store.EtcdConfig{Endpoints: []string{"https://127.0.0.1:2379"}, CAFile: missing}, "--etcd-ca"},
		{"TLS on http", store.EtcdConfig{Endpoints: []string{"http://127.0.0.1:2379"}, CAFile: missing}, "https://"},
		{"bad prefix", store.EtcdConfig{Endpoints: []string{"http://127.0.0.1:2379"}, Prefix: "clustral/"}, "must start with /"},
		{"unreachable", store.EtcdConfig{Endpoints: []string{fmt.Sprintf("http://127.0.0.1:%d", port)}, DialTimeout: time.Second}, "check --etcd-endpoints"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := store.OpenEtcd(t.Context(), tt.cfg)
			if err == nil {
				s.Close()
				t.Fatal("OpenEtcd succeeded")
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want it to mention %q", err, tt.want)
			}
		})
	}
}

// TestEtcdTLS: the store reaches an etcd that serves HTTPS and requires
// client certificates with --etcd-cert, --etcd-key and --etcd-ca, passes
// the suite there, and is refused without its certificate or with
// another CA.
func TestEtcdTLS(t *testing.T) {
	dir := t.TempDir()
	ca, err := harness.NewCA("etcd-ca")
	if err != nil {
		t.Fatal(err)
	}
	e, files, err := harness.StartEtcdTLS(t.Context(), dir, ca)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close() })
	if !strings.HasPrefix(e.URL, "https://") {
		t.Fatalf("etcd URL %s is not https", e.URL)
	}
	var n atomic.Int64
	storetest.Run(t, func(t *testing.T) store.Store {
		t.Helper()
		s := openEtcd(t.Context(), t, store.EtcdConfig{
			Endpoints: []string{e.URL},
			CertFile:  files.ClientCertFile, KeyFile: files.ClientKeyFile, CAFile: files.CAFile,
			Prefix: fmt.Sprintf("/clustral-tls/%d", n.Add(1)),
		})
		return s
	})

	other, err := harness.NewCA("other-ca")
	if err != nil {
		t.Fatal(err)
	}
	otherCA := dir + "/other-ca.pem"
	if err := os.WriteFile(otherCA, other.CertPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name string
		cfg  store.EtcdConfig
	}{
		{"no client certificate", store.EtcdConfig{CAFile: files.CAFile}},
		{"another CA", store.EtcdConfig{CertFile: files.ClientCertFile, KeyFile: files.ClientKeyFile, CAFile: otherCA}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			tt.cfg.Endpoints, tt.cfg.DialTimeout = []string{e.URL}, 2*time.Second
			s, err := store.OpenEtcd(t.Context(), tt.cfg)
			if err == nil {
				s.Close()
				t.Fatal("OpenEtcd succeeded")
			}
			if !strings.Contains(err.Error(), "TLS settings") {
				t.Fatalf("err = %v, want it to point at the TLS settings", err)
			}
		})
	}
}

// TestEtcdRestore: a backup of an etcd store, restored into an empty
// prefix, holds the same keys, values and sequences; a restore refuses a
// prefix in use, and a coordinator's store refuses a prefix whose
// restore did not finish.
func TestEtcdRestore(t *testing.T) {
	e := startEtcd(t)
	open := func(prefix string) *store.Etcd {
		t.Helper()
		s := openEtcd(t.Context(), t, store.EtcdConfig{Endpoints: []string{e.URL}, Prefix: prefix})
		return s
	}
	src := open("/restore-src")
	big := strings.Repeat("x", 900<<10)
	for i := 0; i < 300; i += 100 {
		err := src.Update(func(tx store.Tx) error {
			for j := i; j < i+100; j++ {
				if err := tx.PutRaw(store.Nodes, fmt.Sprintf("n%04d", j), []byte(fmt.Sprint(j))); err != nil {
					return err
				}
				if _, err := tx.NextSequence(store.Audit); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	for _, v := range []string{big, big + "y"} { // two values that do not fit one request together
		err := src.Update(func(tx store.Tx) error { return tx.PutRaw(store.Meta, fmt.Sprintf("big%d", len(v)), []byte(v)) })
		if err != nil {
			t.Fatal(err)
		}
	}
	file := t.TempDir() + "/backup.db"
	if err := src.Backup(file); err != nil {
		t.Fatal(err)
	}
	dst := open("/restore-dst")
	counts, err := dst.Restore(file)
	if err != nil {
		t.Fatal(err)
	}
	if counts[store.Nodes] != 300 || counts[store.Meta] != 2 {
		t.Errorf("restored counts = %v, want 300 nodes and 2 meta keys", counts)
	}
	dump := func(s store.Store) map[string]string {
		t.Helper()
		m := map[string]string{}
		err := s.View(func(tx store.Tx) error {
			for _, b := range store.AllBuckets {
				err := tx.ForEach(b, func(k string, v []byte) error {
					m[string(b)+"/"+k] = string(v)
					return nil
				})
				if err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		return m
	}
	want, got := dump(src), dump(dst)
	if len(got) != len(want) {
		t.Fatalf("restored %d keys, backed up %d", len(got), len(want))
	}
	for k, v := range want {
		if got[k] != v {
			t.Fatalf("restored %s differs (%d bytes, want %d)", k, len(got[k]), len(v))
		}
	}
	var seq uint64
	if err := dst.Update(func(tx store.Tx) (err error) { seq, err = tx.NextSequence(store.Audit); return err }); err != nil {
		t.Fatal(err)
	}
	if seq != 301 {
		t.Errorf("NextSequence after restore = %d, want 301", seq)
	}

	if _, err := dst.Restore(file); err == nil || !strings.Contains(err.Error(), "is not empty") {
		t.Errorf("restore into a prefix in use = %v, want a refusal saying it is not empty", err)
	}

	// A restore that stopped half way leaves its mark.
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{e.URL}, DialTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	if _, err := cli.Put(t.Context(), "/restore-half/_restoring", file); err != nil {
		t.Fatal(err)
	}
	if s, err := store.OpenEtcd(t.Context(), store.EtcdConfig{Endpoints: []string{e.URL}, Prefix: "/restore-half"}); err == nil {
		s.Close()
		t.Error("OpenEtcd on a half-restored prefix succeeded")
	} else if !strings.Contains(err.Error(), "did not finish") {
		t.Errorf("OpenEtcd on a half-restored prefix = %v, want it to say the restore did not finish", err)
	}
}

// TestEtcdClusterMemberCrash: with one of three members killed while
// Updates run, Updates go on (a quorum remains) and every Update that
// returned nil is in the store afterwards.
func TestEtcdClusterMemberCrash(t *testing.T) {
	c := startEtcdCluster(t, 3)
	s := openOn(c.URLs)(t)
	var acked []string
	write := func(i int) {
		t.Helper()
		k := fmt.Sprintf("%05d", i)
		err := s.Update(func(tx store.Tx) error {
			if _, err := tx.NextSequence(store.Changes); err != nil {
				return err
			}
			return tx.PutRaw(store.Changes, k, []byte(k))
		})
		if err == nil {
			acked = append(acked, k)
		} else {
			t.Logf("write %s: %v", k, err) // unknown outcome while the member dies
		}
	}
	for i := range 50 {
		write(i)
	}
	c.Kill(0) // the member the client likely talks to: it is listed first
	for i := 50; i < 150; i++ {
		write(i)
	}
	if len(acked) < 140 {
		t.Fatalf("only %d of 150 writes succeeded with two of three members up", len(acked))
	}
	got := map[string]bool{}
	err := s.View(func(tx store.Tx) error {
		return tx.ForEach(store.Changes, func(k string, _ []byte) error { got[k] = true; return nil })
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range acked {
		if !got[k] {
			t.Errorf("acknowledged write %s is missing after a member crashed", k)
		}
	}
}

// TestEtcdLead: of two stores on one prefix one leads at a time; when the
// leader resigns the other leads at once, and when the leader's process
// stops without resigning (its store closed under it, as a crash leaves
// it) the other leads once the leader's lease expires, within seconds.
func TestEtcdLead(t *testing.T) {
	e := startEtcd(t)
	open := openOn([]string{e.URL})
	first := open(t).(*store.Etcd)
	var leading atomic.Value // name of the leader
	leading.Store("")
	lead := func(s *store.Etcd, name string) (stop func()) {
		ctx, cancel := context.WithCancel(t.Context())
		done := make(chan struct{})
		go func() {
			defer close(done)
			s.Lead(ctx, "test", name, func(ctx context.Context) {
				if !leading.CompareAndSwap("", name) {
					t.Errorf("%s leads while %s does", name, leading.Load())
				}
				<-ctx.Done()
				leading.CompareAndSwap(name, "")
			})
		}()
		return func() { cancel(); <-done }
	}
	waitLeader := func(within time.Duration, want ...string) string {
		t.Helper()
		var l string
		testkit.WaitForWithin(t, within, fmt.Sprintf("one of %v to lead", want), func() bool {
			l = leading.Load().(string)
			return slices.Contains(want, l)
		})
		return l
	}
	// Each store needs its own prefix-sharing handle.
	second := openEtcd(t.Context(), t, store.EtcdConfig{Endpoints: []string{e.URL}, Prefix: first.Prefix()})
	stops := map[string]func(){"first": lead(first, "first"), "second": lead(second, "second")}
	l := waitLeader(5*time.Second, "first", "second")
	// The leader resigns: the other leads at once.
	stops[l]()
	other := map[string]string{"first": "second", "second": "first"}[l]
	waitLeader(2*time.Second, other)
	// The leader's store is closed under it, as a crash leaves etcd: its
	// lease outlives it by its TTL, then the other leads.
	third := openEtcd(t.Context(), t, store.EtcdConfig{Endpoints: []string{e.URL}, Prefix: first.Prefix()})
	stopThird := lead(third, "third")
	t.Cleanup(stopThird)
	map[string]*store.Etcd{"first": first, "second": second}[other].Close()
	start := time.Now()
	stops[other]()
	leading.CompareAndSwap(other, "")
	waitLeader(10*time.Second, "third")
	t.Logf("the leadership moved %s after the leader's store closed", time.Since(start).Round(100*time.Millisecond))
}

// TestEtcdAuditChainAcrossReplicas: two stores on one prefix (two
// replicas) append to the audit chain at once; the head is read in each
// append's transaction, so the commit compares it and no two appends
// chain to the same record: one chain, every record once, that verifies.
func TestEtcdAuditChainAcrossReplicas(t *testing.T) {
	c := startEtcdCluster(t, 3)
	open := openOn(c.URLs)
	a := open(t).(*store.Etcd)
	b := openEtcd(t.Context(), t, store.EtcdConfig{Endpoints: c.URLs, Prefix: a.Prefix()})
	const writers, each = 4, 15
	stores := []store.Store{a, b}
	storetest.Concurrently(t, 2*writers, each, func(w, i int) (bool, error) {
		return true, stores[w%2].Update(func(tx store.Tx) error {
			_, err := auditlog.Append(tx, proto.AuditEvent{Code: proto.AuditCheckpointExport, Time: time.Now(), Actor: fmt.Sprintf("w%d-%d", w, i)})
			return err
		})
	})
	for name, st := range map[string]store.Store{"a": a, "b": b} {
		v, err := auditlog.Verify(st, auditlog.VerifyOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if !v.OK || v.Checked != 2*writers*each || v.First != 1 || v.Last != 2*writers*each {
			t.Fatalf("chain as %s reads it: %+v, want %d records 1..%d that verify", name, v, 2*writers*each, 2*writers*each)
		}
	}
}

// TestEtcdAuditIndex: on etcd, the audit writer's batches fit one
// commit (AppendsPerTx, below --max-txn-ops), a filtered query reads
// the index and finds what a scan of the chain finds, both ways, and
// the index is rebuilt the same in commits etcd takes.
func TestEtcdAuditIndex(t *testing.T) {
	e := startEtcd(t)
	st := openOn([]string{e.URL})(t)
	per := auditlog.AppendsPerTx(st)
	if per < 1 || per*7+6 > 128 {
		t.Fatalf("AppendsPerTx on etcd = %d, does not fit 128 keys a commit", per)
	}
	start := time.Now().Add(-time.Hour)
	if err := audittest.Fill(st, 120, 5, per, start, time.Second); err != nil {
		t.Fatal(err)
	}
	f := auditlog.Filter{User: audittest.User(3), From: start.Add(10 * time.Second)}
	page := func() []uint64 {
		t.Helper()
		var got []uint64
		for cursor := ""; ; {
			p, err := auditlog.Query(st, &f, cursor, true, 7)
			if err != nil {
				t.Fatal(err)
			}
			for _, ev := range p.Events {
				got = append(got, ev.Seq)
			}
			if len(p.Events) == 0 {
				return got
			}
			cursor = p.Next
		}
	}
	indexed := page()
	// Without the index Query matches every record: what it finds is
	// what the index must find.
	if err := st.Update(func(tx store.Tx) error { return tx.Delete(store.Meta, auditlog.MetaIndex) }); err != nil {
		t.Fatal(err)
	}
	scanned := page()
	if len(scanned) == 0 || !slices.Equal(indexed, scanned) {
		t.Fatalf("indexed query = %v, scan = %v", indexed, scanned)
	}
	if n, err := auditlog.BuildIndex(t.Context(), st, per, nil); err != nil || n != 120 {
		t.Fatalf("BuildIndex on etcd = %d, %v; want 120", n, err)
	}
	if got := page(); !slices.Equal(got, scanned) {
		t.Fatalf("after a rebuild, query = %v, scan = %v", got, scanned)
	}
}

// startEtcd starts a one-member etcd for t, stopped when t ends.
func startEtcd(t *testing.T) *harness.Etcd {
	t.Helper()
	e, err := harness.StartEtcd(t.Context(), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close() })
	return e
}

// startEtcdCluster starts an n-member etcd cluster for t, stopped when t
// ends.
func startEtcdCluster(t *testing.T, n int) *harness.EtcdCluster {
	t.Helper()
	c, err := harness.StartEtcdCluster(t.Context(), t.TempDir(), n)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// openEtcd opens an etcd store with cfg for t, closed when t ends.
func openEtcd(ctx context.Context, t *testing.T, cfg store.EtcdConfig) *store.Etcd {
	t.Helper()
	s, err := store.OpenEtcd(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// TestEtcdPresence runs the presence suite on one member and on three;
// a handle closed without ending its announcements, as a crash leaves
// etcd, loses its entries when its lease expires.
func TestEtcdPresence(t *testing.T) {
	onOneAndThree(t, func(t *testing.T, urls []string) {
		open := openOn(urls)
		storetest.RunPresence(t, func(t *testing.T) store.Presence { return open(t).(store.Presence) }, storetest.PresenceOptions{
			Replica: func(t *testing.T, p store.Presence) store.Presence {
				return openEtcd(t.Context(), t, store.EtcdConfig{Endpoints: urls, Prefix: p.(*store.Etcd).Prefix()})
			},
			Crash:  announceInChild(urls),
			Expiry: 10 * time.Second,
		})
	})
}

// Environment of the child process of announceInChild.
const (
	envPresenceChild = "CLUSTRAL_TEST_PRESENCE_CHILD" // endpoints, prefix, replica, key, value; tab-separated
)

// announceInChild returns a PresenceOptions.Crash that runs the
// announcing handle in a child process (this test binary, running
// TestEtcdPresenceChild) and kills it with SIGKILL.
func announceInChild(urls []string) func(t *testing.T, p store.Presence, replica, key, value string) func() {
	return func(t *testing.T, p store.Presence, replica, key, value string) func() {
		t.Helper()
		arg := strings.Join([]string{strings.Join(urls, ","), p.(*store.Etcd).Prefix(), replica, key, value}, "\t")
		proc, err := harness.StartProcess("presence-child", os.Args[0], []string{"-test.run", "^TestEtcdPresenceChild$"},
			append(os.Environ(), envPresenceChild+"="+arg), filepath.Join(t.TempDir(), "child.log"))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(proc.Stop)
		return proc.Kill
	}
}

// TestEtcdPresenceChild is the child process of announceInChild: it
// announces one entry and waits to be killed.
func TestEtcdPresenceChild(t *testing.T) {
	v := os.Getenv(envPresenceChild)
	if v == "" {
		t.Skip("runs only as the child of TestEtcdPresence")
	}
	f := strings.Split(v, "\t")
	s := openEtcd(t.Context(), t, store.EtcdConfig{Endpoints: strings.Split(f[0], ","), Prefix: f[1]})
	s.Announce(t.Context(), f[2]).Set(f[3], f[4])
	select {} // until killed
}

// TestEtcdLastCommit: LastCommit is the revision of the last commit the
// feed delivers, not the cluster's revision, which presence entries (and
// any other write to etcd) move on without a commit.
func TestEtcdLastCommit(t *testing.T) {
	e := startEtcd(t)
	s := openOn([]string{e.URL})(t).(*store.Etcd)
	if err := s.Update(func(tx store.Tx) error { return tx.PutRaw(store.Meta, "k", []byte("v")) }); err != nil {
		t.Fatal(err)
	}
	committed, err := s.ViewRev(func(store.Tx) error { return nil })
	if err != nil {
		t.Fatal(err)
	}
	if last, err := s.LastCommit(); err != nil || last != committed {
		t.Fatalf("LastCommit after a commit at %d = %d, %v", committed, last, err)
	}
	a := s.Announce(t.Context(), "r1")
	a.Set("peer", "10.0.0.1:7947")
	testkit.WaitFor(t, "the presence entry to move the revision on", func() bool {
		rev, err := s.ViewRev(func(store.Tx) error { return nil })
		return err == nil && rev > committed
	})
	if last, err := s.LastCommit(); err != nil || last != committed {
		t.Fatalf("LastCommit after a presence entry = %d, %v; want the commit's %d", last, err, committed)
	}
}

// TestEtcdCloseEndsPresence: a handle closed on a clean shutdown revokes
// its announcements' lease, so the other replicas see them go at once,
// not a lease's TTL later.
func TestEtcdCloseEndsPresence(t *testing.T) {
	e := startEtcd(t)
	s := openOn([]string{e.URL})(t).(*store.Etcd)
	other := openEtcd(t.Context(), t, store.EtcdConfig{Endpoints: []string{e.URL}, Prefix: s.Prefix()})
	var mu sync.Mutex
	present := false
	go other.WatchPresence(t.Context(), func(ev store.PresenceEvent) {
		mu.Lock()
		defer mu.Unlock()
		present = !ev.Reset && !ev.Deleted
	})
	s.Announce(t.Context(), "r1").Set("peer", "10.0.0.1:7947")
	is := func(want bool) func() bool {
		return func() bool { mu.Lock(); defer mu.Unlock(); return present == want }
	}
	testkit.WaitFor(t, "the entry", is(true))
	s.Close()
	testkit.WaitForWithin(t, time.Second, "the entry to go when its handle closed", is(false))
}

// TestEtcdCloseWithoutEtcd: Close waits for the presence lease to be
// revoked, but not forever: with etcd gone it returns within the
// request timeout and the lease's TTL.
func TestEtcdCloseWithoutEtcd(t *testing.T) {
	e := startEtcd(t)
	s := openEtcd(t.Context(), t, store.EtcdConfig{Endpoints: []string{e.URL}, Prefix: "/clustral-test/close", RequestTimeout: 2 * time.Second})
	s.Announce(t.Context(), "r1").Set("peer", "10.0.0.1:7947")
	e.Close()
	done := make(chan struct{})
	start := time.Now()
	go func() { s.Close(); close(done) }()
	select {
	case <-done:
		t.Logf("Close returned %v after etcd stopped", time.Since(start).Round(100*time.Millisecond))
	case <-time.After(20 * time.Second):
		t.Fatal("Close still waiting 20 s after etcd stopped")
	}
}
