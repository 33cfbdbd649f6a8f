package store

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"go.etcd.io/etcd/client/pkg/v3/transport"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
)

// EtcdConfig says how to reach the etcd cluster that holds a store.
type EtcdConfig struct {
	// Endpoints are etcd's client URLs, e.g. https://etcd-0.example:2379.
	Endpoints []string
	// CertFile and KeyFile are a TLS client certificate and its key
	// (PEM), for an etcd that requires client certificates. CAFile is the
	// PEM bundle that signs etcd's serving certificate; empty trusts the
	// system roots.
	CertFile string
	KeyFile  string
	CAFile   string
	// Prefix is the key prefix the store owns (default DefaultEtcdPrefix).
	// Nothing else may write under it: the store's isolation relies on
	// every write going through it.
	Prefix string
	// DialTimeout bounds the first connection (default 5s);
	// RequestTimeout bounds each etcd call (default 10s).
	DialTimeout    time.Duration
	RequestTimeout time.Duration
	// MaxTxnOps is the etcd server's --max-txn-ops (default 128, etcd's
	// default): the most comparisons or writes one commit may carry.
	MaxTxnOps int
	// MaxRetries bounds how often Update reruns its function after a
	// conflict with a concurrent writer (default 64).
	MaxRetries int
	// PageSize is how many keys one range request returns (default 512).
	PageSize int
}

// DefaultEtcdPrefix is the key prefix of a store in etcd unless configured.
const DefaultEtcdPrefix = "/clustral"

func (c EtcdConfig) withDefaults() EtcdConfig {
	if c.Prefix == "" {
		c.Prefix = DefaultEtcdPrefix
	}
	if c.DialTimeout <= 0 {
		c.DialTimeout = 5 * time.Second
	}
	if c.RequestTimeout <= 0 {
		c.RequestTimeout = 10 * time.Second
	}
	if c.MaxTxnOps <= 0 {
		c.MaxTxnOps = 128
	}
	if c.MaxRetries <= 0 {
		c.MaxRetries = 64
	}
	if c.PageSize <= 0 {
		c.PageSize = 512
	}
	return c
}

// Check validates the configuration; its errors name the setting to fix.
func (c EtcdConfig) Check() error {
	if len(c.Endpoints) == 0 {
		return errors.New("the etcd store needs at least one endpoint: set --etcd-endpoints, e.g. https://etcd-0.example.com:2379")
	}
	for _, e := range c.Endpoints {
		u, err := url.Parse(e)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.Port() == "" || (u.Path != "" && u.Path != "/") {
			return fmt.Errorf("etcd endpoint %q is not a client URL: use scheme://host:port, e.g. https://etcd-0.example.com:2379", e)
		}
		if first, _ := url.Parse(c.Endpoints[0]); first.Scheme != u.Scheme {
			return fmt.Errorf("etcd endpoints %q and %q use different schemes: use https:// (or, on loopback only, http://) for all of them", c.Endpoints[0], e)
		}
		if u.Scheme == "http" && (c.CertFile != "" || c.CAFile != "") {
			return fmt.Errorf("etcd endpoint %q is plain HTTP but a TLS certificate or CA is set: use https:// endpoints", e)
		}
	}
	if (c.CertFile == "") != (c.KeyFile == "") {
		return errors.New("an etcd client certificate needs both --etcd-cert and --etcd-key")
	}
	for _, f := range []struct{ flag, path string }{{"--etcd-cert", c.CertFile}, {"--etcd-key", c.KeyFile}, {"--etcd-ca", c.CAFile}} {
		if f.path == "" {
			continue
		}
		if _, err := os.Stat(f.path); err != nil {
			return fmt.Errorf("%s: %w", f.flag, err)
		}
	}
	p := c.withDefaults().Prefix
	if !strings.HasPrefix(p, "/") || strings.HasSuffix(p, "/") || strings.Contains(p, "//") {
		return fmt.Errorf("etcd key prefix %q must start with / and not end with one, e.g. /clustral or /clustral/prod", p)
	}
	return nil
}

// Etcd is a Store in an etcd cluster, under one key prefix.
//
// Layout: the value of key k in bucket b is at <prefix>/<b>/<k>. Two
// kinds of bookkeeping keys sit beside the buckets: <prefix>/_sequence/<b>
// holds b's NextSequence counter (decimal), and <prefix>/_version/<b> is
// rewritten by every commit that writes to b, so that a transaction that
// ranged over b can detect any change to it, deletions included, with
// one comparison. <prefix>/_restoring marks a Restore in progress.
//
// Transactions are serializable (optimistic concurrency): every read of
// a transaction is served at one etcd revision, the first read's, and is
// recorded; writes are buffered in the transaction (and seen by its own
// later reads). The commit is one etcd Txn that compares the mod revision
// of every key read (0 for a key read as absent) and of the version key of
// every bucket ranged over, and applies every write. If any comparison
// fails another writer got in between: Update reruns its function on a
// fresh transaction, up to MaxRetries times, and then fails with a
// *ConflictError. A transaction that read more keys than MaxTxnOps
// comparisons allow compares the version keys of their buckets instead,
// which is coarser (more reruns) but as safe.
//
// Every coordinator replica opens its own Etcd; Watch follows the commits
// of all of them (etcd's watch on the prefix), and Superseded knows this
// handle's own.
type Etcd struct {
	cfg    EtcdConfig
	cli    *clientv3.Client
	ctx    context.Context
	cancel context.CancelFunc
	own    ownCommits
	// closing ends when Close begins; Close then waits for the
	// announcers (Announce) to revoke their leases.
	closing    context.Context
	endClosing context.CancelFunc
	announcers sync.WaitGroup
}

var (
	_ Feed          = (*Etcd)(nil)
	_ Elector       = (*Etcd)(nil)
	_ LastCommitter = (*Etcd)(nil)
)

// electionTTL is how long, in seconds, a leader's etcd lease outlives
// the leader: after a crash, or once cut off from etcd, the leadership
// moves to another handle within about this long.
const electionTTL = 5

// Lead implements Elector with an etcd election under
// <prefix>/_election/<name>, on a session whose lease the handle keeps
// alive. The leadership is lost when the lease expires (the handle could
// not reach etcd for electionTTL seconds); fn's context ends then, and a
// former leader that is only slow to notice overlaps the next one by at
// most the time it takes to notice, which is why the work done under it
// must also be safe to repeat (it is: each step is a store transaction
// that decides from what the store holds).
func (s *Etcd) Lead(ctx context.Context, name, id string, fn func(context.Context)) error {
	for ctx.Err() == nil {
		if err := s.leadOnce(ctx, name, id, fn); err != nil && ctx.Err() == nil {
			select {
			case <-ctx.Done():
			case <-time.After(time.Second):
			}
		}
	}
	return ctx.Err()
}

// session grants a lease of ttl seconds and returns a session that keeps
// it alive until the session is closed (which revokes it) or the store
// closes. The grant is bounded by ctx and the request timeout, so an
// etcd that accepts connections but never answers yields an error
// rather than a caller waiting forever; the keep-alives run on the
// store's context, which outlives ctx.
func (s *Etcd) session(ctx context.Context, ttl int) (*concurrency.Session, error) {
	gctx, cancel := context.WithTimeout(ctx, s.cfg.RequestTimeout)
	lease, err := s.cli.Grant(gctx, int64(ttl))
	cancel()
	if err != nil {
		return nil, fmt.Errorf("grant etcd lease: %w", err)
	}
	sess, err := concurrency.NewSession(s.cli, concurrency.WithLease(lease.ID), concurrency.WithTTL(ttl), concurrency.WithContext(s.ctx))
	if err != nil {
		return nil, fmt.Errorf("etcd session on lease %x: %w", lease.ID, err)
	}
	return sess, nil
}

// leadOnce campaigns once and, if elected, runs fn until the leadership
// or ctx ends.
func (s *Etcd) leadOnce(ctx context.Context, name, id string, fn func(context.Context)) error {
	sess, err := s.session(ctx, electionTTL)
	if err != nil {
		return fmt.Errorf("etcd session for election %s: %w", name, err)
	}
	defer sess.Close() // revokes the lease: a successor is elected at once
	e := concurrency.NewElection(sess, s.cfg.Prefix+"/_election/"+name)
	if err := e.Campaign(ctx, id); err != nil {
		return fmt.Errorf("campaign for %s: %w", name, err)
	}
	lctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-sess.Done():
			cancel()
		case <-lctx.Done():
		}
	}()
	fn(lctx)
	return nil
}

// OpenEtcd connects to etcd and checks that it answers. The caller must
// Close the store, which closes the connection.
func OpenEtcd(ctx context.Context, cfg EtcdConfig) (*Etcd, error) {
	if err := cfg.Check(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	ccfg := clientv3.Config{
		Endpoints:   cfg.Endpoints,
		DialTimeout: cfg.DialTimeout,
	}
	if cfg.CertFile != "" || cfg.CAFile != "" || strings.HasPrefix(cfg.Endpoints[0], "https://") {
		info := transport.TLSInfo{CertFile: cfg.CertFile, KeyFile: cfg.KeyFile, TrustedCAFile: cfg.CAFile}
		tc, err := info.ClientConfig()
		if err != nil {
			return nil, fmt.Errorf("etcd TLS (--etcd-cert, --etcd-key, --etcd-ca): %w", err)
		}
		ccfg.TLS = tc
	}
	cli, err := clientv3.New(ccfg)
	if err != nil {
		return nil, fmt.Errorf("connect to etcd %s: %w", strings.Join(cfg.Endpoints, ","), err)
	}
	sctx, cancel := context.WithCancel(context.Background())
	s := &Etcd{cfg: cfg, cli: cli, ctx: sctx, cancel: cancel}
	s.closing, s.endClosing = context.WithCancel(context.Background())
	pctx, pcancel := context.WithTimeout(ctx, cfg.DialTimeout)
	defer pcancel()
	resp, err := cli.Get(pctx, s.restoringKey(), clientv3.WithCountOnly())
	if err != nil {
		s.Close()
		return nil, fmt.Errorf("reach etcd %s: %w (check --etcd-endpoints, that etcd runs, and its TLS settings)", strings.Join(cfg.Endpoints, ","), err)
	}
	if resp.Count > 0 {
		s.Close()
		return nil, fmt.Errorf("etcd prefix %s holds a restore that did not finish: delete it (etcdctl del --prefix %s/) and restore the backup again", cfg.Prefix, cfg.Prefix)
	}
	return s, nil
}

// Restore loads a backup, the bbolt file at path, into the store's
// prefix, which must be empty. It is not one transaction: it marks the
// prefix as being restored first (OpenEtcd refuses such a prefix), loads
// the buckets and their sequences in batches, and removes the mark last,
// so an interrupted restore is never mistaken for a store. It returns the
// number of keys loaded per bucket. No coordinator may use the prefix
// meanwhile.
func (s *Etcd) Restore(path string) (map[Bucket]int, error) {
	if _, err := Verify(path); err != nil {
		return nil, fmt.Errorf("restore: %w", err)
	}
	db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true, Timeout: 2 * time.Second})
	if err != nil {
		return nil, fmt.Errorf("restore: open %s: %w", path, err)
	}
	defer db.Close()
	ctx, cancel := context.WithCancel(s.ctx)
	defer cancel()
	txn := func(cmps []clientv3.Cmp, ops []clientv3.Op) (bool, error) {
		c, cancel := context.WithTimeout(ctx, s.cfg.RequestTimeout)
		defer cancel()
		resp, err := s.cli.Txn(c).If(cmps...).Then(ops...).Commit()
		if err != nil {
			return false, fmt.Errorf("restore into etcd: %w", err)
		}
		return resp.Succeeded, nil
	}
	// Mark the prefix, if and only if it is empty.
	end := clientv3.GetPrefixRangeEnd(s.cfg.Prefix + "/")
	ok, err := txn([]clientv3.Cmp{clientv3.Compare(clientv3.CreateRevision(s.cfg.Prefix+"/"), "=", 0).WithRange(end)},
		[]clientv3.Op{clientv3.OpPut(s.restoringKey(), path)})
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, fmt.Errorf("restore: etcd prefix %s is not empty: restore into a new prefix (--etcd-prefix), or delete this one first (etcdctl del --prefix %s/)", s.cfg.Prefix, s.cfg.Prefix)
	}
	const maxBatchBytes = 1 << 20 // below etcd's default --max-request-bytes (1.5 MiB)
	counts := map[Bucket]int{}
	var (
		ops  []clientv3.Op
		size int
	)
	flush := func() error {
		if len(ops) == 0 {
			return nil
		}
		_, err := txn(nil, ops)
		ops, size = ops[:0], 0
		return err
	}
	add := func(k string, v []byte) error {
		if len(ops) > 0 && (len(ops) >= s.cfg.MaxTxnOps || size+len(k)+len(v) > maxBatchBytes) {
			if err := flush(); err != nil {
				return err
			}
		}
		ops = append(ops, clientv3.OpPut(k, string(v)))
		size += len(k) + len(v)
		return nil
	}
	err = db.View(func(tx *bolt.Tx) error {
		for _, b := range AllBuckets {
			bk := tx.Bucket([]byte(b))
			if bk == nil {
				continue // a bucket added after the backup was made (Verify)
			}
			err := bk.ForEach(func(k, v []byte) error {
				counts[b]++
				return add(s.bucketPrefix(b)+string(k), v)
			})
			if err != nil {
				return err
			}
			if seq := bk.Sequence(); seq > 0 {
				if err := add(s.seqKey(b), []byte(strconv.FormatUint(seq, 10))); err != nil {
					return err
				}
			}
		}
		return flush()
	})
	if err != nil {
		return nil, fmt.Errorf("restore %s: %w (delete the prefix with etcdctl del --prefix %s/ and restore again)", path, err, s.cfg.Prefix)
	}
	if _, err := txn(nil, []clientv3.Op{clientv3.OpDelete(s.restoringKey())}); err != nil {
		return nil, err
	}
	return counts, nil
}

// MaxWrites returns how many keys one Update may write (see MaxWrites).
func (s *Etcd) MaxWrites() int { return s.cfg.MaxTxnOps }

// Prefix returns the key prefix the store owns.
func (s *Etcd) Prefix() string { return s.cfg.Prefix }

// Close implements Store. It cancels calls in flight and closes the
// connection to etcd.
func (s *Etcd) Close() error {
	s.endClosing()
	s.announcers.Wait() // their leases revoked: their entries are gone
	s.cancel()
	return s.cli.Close()
}

func (s *Etcd) bucketPrefix(b Bucket) string { return s.cfg.Prefix + "/" + string(b) + "/" }
func (s *Etcd) seqKey(b Bucket) string       { return s.cfg.Prefix + "/_sequence/" + string(b) }
func (s *Etcd) versionKey(b Bucket) string   { return s.cfg.Prefix + "/_version/" + string(b) }
func (s *Etcd) restoringKey() string         { return s.cfg.Prefix + "/_restoring" }

func (s *Etcd) call() (context.Context, context.CancelFunc) {
	return context.WithTimeout(s.ctx, s.cfg.RequestTimeout)
}

// ConflictError is returned by Etcd.Update when its transaction kept
// conflicting with concurrent writers.
type ConflictError struct {
	Attempts int
	// Buckets are the buckets the last attempt read.
	Buckets []Bucket
}

func (e *ConflictError) Error() string {
	return fmt.Sprintf("etcd transaction conflicted with concurrent writers %d times in a row (it read %v): the store is contended; retry later, or find the writer that keeps changing these buckets", e.Attempts, e.Buckets)
}

// View implements Store. Every read is served at one etcd revision.
func (s *Etcd) View(fn func(Tx) error) error {
	return fn(&etcdTx{s: s})
}

// ViewRev implements Feed: every read of fn is served at the revision it
// returns.
func (s *Etcd) ViewRev(fn func(Tx) error) (int64, error) {
	tx := &etcdTx{s: s}
	if err := fn(tx); err != nil {
		return 0, err
	}
	if tx.rev == 0 { // fn read nothing: the current revision
		if _, err := tx.get(s.restoringKey(), clientv3.WithCountOnly()); err != nil {
			return 0, err
		}
	}
	return tx.rev, nil
}

// LastCommit implements LastCommitter: every commit rewrites the version
// keys of the buckets it writes to, so the latest is the highest mod
// revision among them, read with one request.
func (s *Etcd) LastCommit() (int64, error) {
	ctx, cancel := s.call()
	defer cancel()
	resp, err := s.cli.Get(ctx, s.cfg.Prefix+"/_version/", clientv3.WithPrefix(), clientv3.WithKeysOnly(),
		clientv3.WithSort(clientv3.SortByModRevision, clientv3.SortDescend), clientv3.WithLimit(1))
	if err != nil {
		return 0, fmt.Errorf("read the revision of the last commit under %s: %w", s.cfg.Prefix, err)
	}
	if len(resp.Kvs) == 0 {
		return 0, nil
	}
	return resp.Kvs[0].ModRevision, nil
}

// Shared implements Feed: other replicas may write to the prefix.
func (s *Etcd) Shared() bool { return true }

// Superseded implements Feed.
func (s *Etcd) Superseded(rev int64, b Bucket, key string) bool {
	return s.own.superseded(rev, b, key)
}

// Watch implements Feed with an etcd watch on the prefix. The watch
// requires a leader: on a member cut off from the quorum it ends with an
// error instead of going quiet, and the caller retries on another member.
// A commit's events arrive in one response (etcd never splits a revision
// unless asked to fragment), so each is delivered whole.
func (s *Etcd) Watch(ctx context.Context, after int64, fn func(Commit) error) error {
	ctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer cancel()
	wch := s.cli.Watch(ctx, s.cfg.Prefix+"/", clientv3.WithPrefix(), clientv3.WithRev(after+1))
	for resp := range wch {
		if resp.CompactRevision != 0 {
			return &CompactedError{After: after, Compacted: resp.CompactRevision}
		}
		if err := resp.Err(); err != nil {
			return fmt.Errorf("etcd watch of %s after revision %d: %w", s.cfg.Prefix, after, err)
		}
		var c Commit
		flush := func() error {
			if len(c.Changes) > 0 {
				if err := fn(c); err != nil {
					return err
				}
			}
			if c.Rev > after {
				after = c.Rev
			}
			c = Commit{}
			return nil
		}
		for _, ev := range resp.Events {
			if ev.Kv.ModRevision != c.Rev && c.Rev != 0 {
				if err := flush(); err != nil {
					return err
				}
			}
			c.Rev = ev.Kv.ModRevision
			b, key, ok := s.splitKey(string(ev.Kv.Key))
			if !ok {
				continue // bookkeeping
			}
			ch := Change{Bucket: b, Key: key}
			if ev.Type == clientv3.EventTypeDelete {
				ch.Deleted = true
			} else {
				ch.Value = ev.Kv.Value
			}
			c.Changes = append(c.Changes, ch)
		}
		if err := flush(); err != nil {
			return err
		}
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	return fmt.Errorf("etcd watch of %s ended after revision %d", s.cfg.Prefix, after)
}

// splitKey returns the bucket and key of a full data key; ok is false
// for bookkeeping keys.
func (s *Etcd) splitKey(full string) (b Bucket, key string, ok bool) {
	rest, ok := strings.CutPrefix(full, s.cfg.Prefix+"/")
	if !ok {
		return "", "", false
	}
	name, key, ok := strings.Cut(rest, "/")
	if !ok || strings.HasPrefix(name, "_") {
		return "", "", false
	}
	return Bucket(name), key, true
}

// Update implements Store. fn may run more than once (after a conflict
// with a concurrent writer), so it must have no effect besides its calls
// on the Tx, and must decide only from what the Tx returns. When Update
// returns nil the writes are committed by a quorum of etcd members.
func (s *Etcd) Update(fn func(Tx) error) error {
	var last *etcdTx
	for attempt := range s.cfg.MaxRetries {
		if attempt > 0 {
			// Jittered backoff, so that colliding writers spread out.
			d := time.Duration(rand.Int64N(int64(min(attempt, 10)) * int64(time.Millisecond)))
			select {
			case <-time.After(d):
			case <-s.ctx.Done():
				return errors.New("etcd store is closed")
			}
		}
		tx := &etcdTx{s: s, writable: true, writes: map[string]write{}, reads: map[string]read{}, ranged: map[Bucket]bool{}}
		last = tx
		err := fn(tx)
		if errors.Is(err, errCompactedRead) {
			continue // the snapshot revision was compacted away: rerun
		}
		if err != nil {
			return err
		}
		ok, err := tx.commit()
		if err != nil {
			return err
		}
		if ok {
			return nil
		}
	}
	return &ConflictError{Attempts: s.cfg.MaxRetries, Buckets: last.readBuckets()}
}

// Backup implements Store: a bbolt file with the store's contents at one
// etcd revision, written to a temporary file and renamed into place, mode
// 0600. A coordinator can open it with the bbolt backend.
func (s *Etcd) Backup(path string) error { return backupFile(path, s.BackupTo) }

// BackupTo implements Store: it writes the store's contents at one etcd
// revision to w as a bbolt file (the bbolt backend's format), so a backup
// restores the same way whatever the backend.
func (s *Etcd) BackupTo(w io.Writer) (int64, error) {
	dir, err := os.MkdirTemp("", "clustral-backup-")
	if err != nil {
		return 0, fmt.Errorf("backup: %w", err)
	}
	defer os.RemoveAll(dir)
	path := filepath.Join(dir, "snapshot.db")
	var werr error
	for range 3 {
		if werr = s.snapshotBolt(path); !errors.Is(werr, errCompactedRead) {
			break
		}
		os.Remove(path)
	}
	if werr != nil {
		return 0, fmt.Errorf("backup: %w", werr)
	}
	f, err := os.Open(path)
	if err != nil {
		return 0, fmt.Errorf("backup: %w", err)
	}
	defer f.Close()
	n, err := io.Copy(w, f)
	if err != nil {
		return n, fmt.Errorf("backup: %w", err)
	}
	return n, nil
}

// snapshotBolt writes the store at one revision into a new bbolt file.
func (s *Etcd) snapshotBolt(path string) error {
	db, err := bolt.Open(path, 0o600, &bolt.Options{NoSync: true})
	if err != nil {
		return err
	}
	defer db.Close()
	tx := &etcdTx{s: s}
	for _, b := range AllBuckets {
		err := db.Update(func(btx *bolt.Tx) error {
			_, err := btx.CreateBucket([]byte(b))
			return err
		})
		if err != nil {
			return err
		}
		var batch [][2][]byte
		flush := func() error {
			err := db.Update(func(btx *bolt.Tx) error {
				bk := btx.Bucket([]byte(b))
				for _, kv := range batch {
					if err := bk.Put(kv[0], kv[1]); err != nil {
						return err
					}
				}
				return nil
			})
			batch = batch[:0]
			return err
		}
		err = tx.ForEach(b, func(k string, v []byte) error {
			batch = append(batch, [2][]byte{[]byte(k), bytes.Clone(v)})
			if len(batch) >= s.cfg.PageSize {
				return flush()
			}
			return nil
		})
		if err == nil {
			err = flush()
		}
		if err != nil {
			return err
		}
		seq, err := tx.sequence(b)
		if err != nil {
			return err
		}
		err = db.Update(func(btx *bolt.Tx) error { return btx.Bucket([]byte(b)).SetSequence(seq) })
		if err != nil {
			return err
		}
	}
	return db.Sync()
}

// errCompactedRead says the transaction's read revision was compacted.
var errCompactedRead = errors.New("etcd compacted the revision this transaction reads at")

type read struct {
	val []byte // nil: absent
	mod int64  // 0: absent
}

type write struct {
	val []byte
	del bool
}

// etcdTx is a transaction on an Etcd store. It is used by one goroutine.
type etcdTx struct {
	s        *Etcd
	writable bool
	rev      int64 // revision every read is served at; 0 before the first
	reads    map[string]read
	ranged   map[Bucket]bool
	writes   map[string]write
}

func (t *etcdTx) checkBucket(b Bucket) error {
	if !slices.Contains(AllBuckets, b) {
		return fmt.Errorf("unknown bucket %q", b)
	}
	return nil
}

// get reads key at the transaction's revision, fixing the revision on
// the first read.
func (t *etcdTx) get(key string, opts ...clientv3.OpOption) (*clientv3.GetResponse, error) {
	if t.rev != 0 {
		opts = append(opts, clientv3.WithRev(t.rev))
	}
	ctx, cancel := t.s.call()
	defer cancel()
	resp, err := t.s.cli.Get(ctx, key, opts...)
	if errors.Is(err, rpctypes.ErrCompacted) {
		return nil, fmt.Errorf("%w %d: %w", errCompactedRead, t.rev, err)
	}
	if err != nil {
		return nil, fmt.Errorf("etcd read %s: %w", key, err)
	}
	if t.rev == 0 {
		t.rev = resp.Header.Revision
	}
	return resp, nil
}

// value returns the value at full key as this transaction sees it.
func (t *etcdTx) value(key string) ([]byte, bool, error) {
	if w, ok := t.writes[key]; ok {
		return w.val, !w.del, nil
	}
	if r, ok := t.reads[key]; ok {
		return r.val, r.mod != 0, nil
	}
	resp, err := t.get(key)
	if err != nil {
		return nil, false, err
	}
	var r read
	if len(resp.Kvs) == 1 {
		r = read{val: resp.Kvs[0].Value, mod: resp.Kvs[0].ModRevision}
	}
	if t.reads != nil { // View records nothing
		t.reads[key] = r
	}
	return r.val, r.mod != 0, nil
}

func (t *etcdTx) put(key string, w write) error {
	if !t.writable {
		return errors.New("write in a read-only transaction: use Update")
	}
	t.writes[key] = w
	return nil
}

func (t *etcdTx) GetRaw(b Bucket, key string) ([]byte, error) {
	if err := t.checkBucket(b); err != nil {
		return nil, err
	}
	v, ok, err := t.value(t.s.bucketPrefix(b) + key)
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, fmt.Errorf("%s/%s: %w", b, key, ErrNotFound)
	}
	return bytes.Clone(v), nil
}

func (t *etcdTx) PutRaw(b Bucket, key string, value []byte) error {
	if err := t.checkBucket(b); err != nil {
		return err
	}
	if key == "" {
		return errors.New("put: key is empty")
	}
	return t.put(t.s.bucketPrefix(b)+key, write{val: bytes.Clone(value)})
}

func (t *etcdTx) Delete(b Bucket, key string) error {
	if err := t.checkBucket(b); err != nil {
		return err
	}
	return t.put(t.s.bucketPrefix(b)+key, write{del: true})
}

// ForEach implements Tx: it pages through b in key order at the
// transaction's revision, merging the transaction's own writes. In an
// Update the whole bucket becomes part of the read set (through its
// version key), whether or not fn stops early.
func (t *etcdTx) ForEach(b Bucket, fn func(string, []byte) error) error {
	if err := t.checkBucket(b); err != nil {
		return err
	}
	pfx := t.s.bucketPrefix(b)
	if t.ranged != nil {
		t.ranged[b] = true
	}
	var mine []string // this transaction's writes to b, in key order
	for k := range t.writes {
		if strings.HasPrefix(k, pfx) {
			mine = append(mine, k)
		}
	}
	slices.Sort(mine)
	emit := func(k string, v []byte) error { return fn(strings.TrimPrefix(k, pfx), v) }
	// flushMine emits this transaction's writes before key (all if
	// key is empty).
	flushMine := func(before string) error {
		for len(mine) > 0 && (before == "" || mine[0] < before) {
			k := mine[0]
			mine = mine[1:]
			if w := t.writes[k]; !w.del {
				if err := emit(k, w.val); err != nil {
					return err
				}
			}
		}
		return nil
	}
	end := clientv3.GetPrefixRangeEnd(pfx)
	from := pfx
	for {
		resp, err := t.get(from, clientv3.WithRange(end), clientv3.WithLimit(int64(t.s.cfg.PageSize)),
			clientv3.WithSort(clientv3.SortByKey, clientv3.SortAscend))
		if err != nil {
			return err
		}
		for _, kv := range resp.Kvs {
			k := string(kv.Key)
			if err := flushMine(k); err != nil {
				return err
			}
			if len(mine) > 0 && mine[0] == k {
				continue // flushMine emits it with the next key
			}
			if err := emit(k, kv.Value); err != nil {
				return err
			}
		}
		if !resp.More || len(resp.Kvs) == 0 {
			break
		}
		from = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
	}
	return flushMine("")
}

// Scan implements Tx: it pages through the range at the transaction's
// revision. In an Update the whole bucket becomes part of the read set,
// as with ForEach; a scan of a bucket the transaction wrote to goes
// through ForEach, which merges those writes.
func (t *etcdTx) Scan(b Bucket, from, to string, reverse bool, fn func(string, []byte) error) error {
	if err := t.checkBucket(b); err != nil {
		return err
	}
	pfx := t.s.bucketPrefix(b)
	if t.ranged != nil {
		t.ranged[b] = true
	}
	for k := range t.writes {
		if strings.HasPrefix(k, pfx) {
			return t.scanMerged(b, from, to, reverse, fn)
		}
	}
	start, end := pfx+from, clientv3.GetPrefixRangeEnd(pfx)
	if to != "" {
		end = pfx + to
	}
	order := clientv3.SortAscend
	if reverse {
		order = clientv3.SortDescend
	}
	for start < end {
		resp, err := t.get(start, clientv3.WithRange(end), clientv3.WithLimit(int64(t.s.cfg.PageSize)),
			clientv3.WithSort(clientv3.SortByKey, order))
		if err != nil {
			return err
		}
		for _, kv := range resp.Kvs {
			if err := fn(strings.TrimPrefix(string(kv.Key), pfx), kv.Value); err != nil {
				return scanned(err)
			}
		}
		if !resp.More || len(resp.Kvs) == 0 {
			break
		}
		last := string(resp.Kvs[len(resp.Kvs)-1].Key)
		if reverse {
			end = last
		} else {
			start = last + "\x00"
		}
	}
	return nil
}

// scanMerged is Scan over ForEach, for a bucket the transaction wrote.
func (t *etcdTx) scanMerged(b Bucket, from, to string, reverse bool, fn func(string, []byte) error) error {
	type kv struct {
		k string
		v []byte
	}
	var in []kv
	err := t.ForEach(b, func(k string, v []byte) error {
		if inRange(k, from, to) {
			in = append(in, kv{k, v})
		}
		return nil
	})
	if err != nil {
		return err
	}
	if reverse {
		slices.Reverse(in)
	}
	for _, e := range in {
		if err := fn(e.k, e.v); err != nil {
			return scanned(err)
		}
	}
	return nil
}

// sequence returns b's counter as this transaction sees it.
func (t *etcdTx) sequence(b Bucket) (uint64, error) {
	v, ok, err := t.value(t.s.seqKey(b))
	if err != nil || !ok {
		return 0, err
	}
	n, err := strconv.ParseUint(string(v), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("sequence of %s: %q is not a number: %w", b, v, err)
	}
	return n, nil
}

func (t *etcdTx) NextSequence(b Bucket) (uint64, error) {
	if err := t.checkBucket(b); err != nil {
		return 0, err
	}
	if !t.writable {
		return 0, errors.New("next sequence in a read-only transaction: use Update")
	}
	n, err := t.sequence(b)
	if err != nil {
		return 0, err
	}
	n++
	return n, t.put(t.s.seqKey(b), write{val: []byte(strconv.FormatUint(n, 10))})
}

// bucketOf returns the bucket of a full data key, or "" for bookkeeping.
func (t *etcdTx) bucketOf(key string) Bucket {
	b, _, _ := t.s.splitKey(key)
	return b
}

func (t *etcdTx) readBuckets() []Bucket {
	set := map[Bucket]bool{}
	for b := range t.ranged {
		set[b] = true
	}
	for k := range t.reads {
		if b := t.bucketOf(k); b != "" {
			set[b] = true
		}
	}
	out := make([]Bucket, 0, len(set))
	for b := range set {
		out = append(out, b)
	}
	slices.Sort(out)
	return out
}

// commit applies the writes if nothing the transaction read has changed
// since its read revision. It reports false on a conflict.
func (t *etcdTx) commit() (bool, error) {
	if len(t.writes) == 0 {
		return true, nil // reads at one revision: nothing to apply
	}
	written := map[Bucket]bool{}
	keys := slices.Sorted(func(yield func(string) bool) {
		for k := range t.writes {
			if !yield(k) {
				return
			}
		}
	})
	var ops []clientv3.Op
	for _, k := range keys {
		w := t.writes[k]
		if w.del {
			ops = append(ops, clientv3.OpDelete(k))
		} else {
			ops = append(ops, clientv3.OpPut(k, string(w.val)))
		}
		if b := t.bucketOf(k); b != "" {
			written[b] = true
		}
	}
	for _, b := range slices.Sorted(func(yield func(Bucket) bool) {
		for b := range written {
			if !yield(b) {
				return
			}
		}
	}) {
		ops = append(ops, clientv3.OpPut(t.s.versionKey(b), ""))
	}
	if len(ops) > t.s.cfg.MaxTxnOps {
		return false, fmt.Errorf("etcd transaction writes %d keys, more than etcd allows in one commit (%d, its --max-txn-ops): raise --max-txn-ops on every etcd member and the store's MaxTxnOps to match", len(ops), t.s.cfg.MaxTxnOps)
	}
	cmps := t.compares()
	ctx, cancel := t.s.call()
	defer cancel()
	resp, err := t.s.cli.Txn(ctx).If(cmps...).Then(ops...).Commit()
	if err != nil {
		// The commit may or may not have been applied (a lost reply,
		// a leader change): say so rather than guess.
		return false, fmt.Errorf("etcd commit, outcome unknown (the change may or may not be stored; check before retrying): %w", err)
	}
	if resp.Succeeded {
		var mine []Change
		for _, k := range keys {
			if b, key, ok := t.s.splitKey(k); ok {
				mine = append(mine, Change{Bucket: b, Key: key})
			}
		}
		t.s.own.record(resp.Header.Revision, mine)
	}
	return resp.Succeeded, nil
}

// compares builds the commit's conditions: the mod revision of every key
// read, and for every bucket ranged over, that its version key has not
// changed since the read revision. If that is more than the server
// accepts, keys are covered by their bucket's version key instead.
func (t *etcdTx) compares() []clientv3.Cmp {
	if t.rev == 0 {
		return nil // nothing was read
	}
	buckets := map[Bucket]bool{}
	for b := range t.ranged {
		buckets[b] = true
	}
	var keyed []string
	for k := range t.reads {
		if b := t.bucketOf(k); b == "" || !buckets[b] {
			keyed = append(keyed, k)
		}
	}
	if len(keyed)+len(buckets) > t.s.cfg.MaxTxnOps {
		// Coarsen: a bucket's version key changes with any write to it.
		var rest []string
		for _, k := range keyed {
			if b := t.bucketOf(k); b != "" {
				buckets[b] = true
			} else {
				rest = append(rest, k)
			}
		}
		keyed = rest
	}
	slices.Sort(keyed)
	cmps := make([]clientv3.Cmp, 0, len(keyed)+len(buckets))
	for _, k := range keyed {
		cmps = append(cmps, clientv3.Compare(clientv3.ModRevision(k), "=", t.reads[k].mod))
	}
	for b := range buckets {
		cmps = append(cmps, clientv3.Compare(clientv3.ModRevision(t.s.versionKey(b)), "<", t.rev+1))
	}
	return cmps
}
