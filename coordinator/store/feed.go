package store

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"sync"
)

// Change is what one committed transaction did to one key.
type Change struct {
	Bucket Bucket
	Key    string
	// Value is the key's new value; nil when Deleted.
	Value   []byte
	Deleted bool
}

// Commit is every change one transaction committed, in (bucket, key)
// order, with the transaction's revision. One transaction may hold the
// writes of several concurrent Updates (Bolt's group commit). Bookkeeping (NextSequence
// counters) is not part of it.
type Commit struct {
	Rev     int64
	Changes []Change
}

// Feed is a Store whose commits can be followed, in order, by every
// process that uses it: how coordinator replicas sharing one etcd keep
// their in-memory views in step. Revisions increase with every commit; a
// reader that saw revision r has seen every commit up to r and none after.
type Feed interface {
	Store
	// Shared reports whether writers other than this handle may commit to
	// the store: false for a bbolt file (one process holds it), true for
	// etcd.
	Shared() bool
	// ViewRev is View that also returns the revision fn read at.
	ViewRev(fn func(Tx) error) (int64, error)
	// Watch calls fn with every commit after revision after, from every
	// writer, in revision order, one call at a time, until ctx ends
	// (returning ctx's error) or fn fails (returning its error). A commit
	// that changed only bookkeeping may be left out. If the store no
	// longer keeps history back to after, Watch returns a
	// *CompactedError: read the store again (ViewRev) and watch from the
	// revision that returns. Any other error (the store unreachable) may
	// be retried from the last revision fn saw.
	Watch(ctx context.Context, after int64, fn func(Commit) error) error
	// Superseded reports whether this handle itself committed the key's
	// change at rev, or a later change of the same key: a reader that
	// applies its own commits as it makes them skips what Superseded
	// reports, so that it applies no commit twice and no older value over
	// a newer one. Called for every change a Watch delivers, it forgets
	// each own commit once the watch reaches it. Safe for concurrent use.
	Superseded(rev int64, b Bucket, key string) bool
}

// CompactedError says a Watch asked for history the store no longer
// keeps.
type CompactedError struct {
	// After is the revision the watch was to resume after; Compacted is
	// the oldest the store still knows.
	After, Compacted int64
}

func (e *CompactedError) Error() string {
	return fmt.Sprintf("store history after revision %d is compacted (kept from %d): read the whole store again and watch from there", e.After, e.Compacted)
}

// changeSet collects the writes of one transaction, the last write of a
// key winning.
type changeSet map[[2]string]Change

// put and del record nothing in a nil changeSet.
func (c changeSet) put(b Bucket, key string, value []byte) {
	if c == nil {
		return
	}
	c[[2]string{string(b), key}] = Change{Bucket: b, Key: key, Value: slices.Clone(value)}
}

func (c changeSet) del(b Bucket, key string) {
	if c == nil {
		return
	}
	c[[2]string{string(b), key}] = Change{Bucket: b, Key: key, Deleted: true}
}

// sorted returns the changes in (bucket, key) order.
func (c changeSet) sorted() []Change {
	out := make([]Change, 0, len(c))
	for _, ch := range c {
		out = append(out, ch)
	}
	slices.SortFunc(out, func(a, b Change) int { return cmp.Or(cmp.Compare(a.Bucket, b.Bucket), cmp.Compare(a.Key, b.Key)) })
	return out
}

// historyBytes bounds the values an in-process store's history holds.
const historyBytes = 16 << 20

// history is the recent commits of an in-process store (Bolt, Mem),
// kept for Watch: at most max commits and historyBytes of values.
// Publishing must happen in commit order.
type history struct {
	mu      sync.Mutex
	max     int      // commits kept
	commits []Commit // in revision order
	size    int      // bytes of values in commits
	dropped int64    // revision of the newest commit no longer kept
	wake    chan struct{}
}

func newHistory(max int) *history {
	return &history{max: max, wake: make(chan struct{})}
}

func commitSize(c Commit) int {
	n := 0
	for _, ch := range c.Changes {
		n += len(ch.Key) + len(ch.Value)
	}
	return n
}

// publish appends c and wakes the watchers.
func (h *history) publish(c Commit) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.commits = append(h.commits, c)
	h.size += commitSize(c)
	n := 0
	for len(h.commits)-n > h.max || (h.size > historyBytes && len(h.commits)-n > 1) {
		h.size -= commitSize(h.commits[n])
		n++
	}
	if n > 0 {
		h.dropped = h.commits[n-1].Rev
		h.commits = slices.Delete(h.commits, 0, n)
	}
	close(h.wake)
	h.wake = make(chan struct{})
}

// forget marks every revision up to rev as not kept.
func (h *history) forget(rev int64) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.dropped = max(h.dropped, rev)
}

// since returns the kept commits after rev, and a channel closed at the
// next publish.
func (h *history) since(rev int64) ([]Commit, <-chan struct{}, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if rev < h.dropped {
		return nil, nil, &CompactedError{After: rev, Compacted: h.dropped + 1}
	}
	i, _ := slices.BinarySearchFunc(h.commits, rev+1, func(c Commit, r int64) int { return cmp.Compare(c.Rev, r) })
	return slices.Clone(h.commits[i:]), h.wake, nil
}

// watch implements Feed.Watch on the history.
func (h *history) watch(ctx context.Context, after int64, fn func(Commit) error) error {
	for {
		cs, wake, err := h.since(after)
		if err != nil {
			return err
		}
		for _, c := range cs {
			if err := fn(c); err != nil {
				return err
			}
			after = c.Rev
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-wake:
		}
	}
}

// ownCommits remembers the revision of a handle's newest commit of each
// key until a watch reaches it (Feed.Superseded).
type ownCommits struct {
	mu  sync.Mutex
	rev map[[2]string]int64
}

func (o *ownCommits) record(rev int64, changes []Change) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.rev == nil {
		o.rev = map[[2]string]int64{}
	}
	for _, ch := range changes {
		o.rev[[2]string{string(ch.Bucket), ch.Key}] = rev
	}
}

func (o *ownCommits) superseded(rev int64, b Bucket, key string) bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	k := [2]string{string(b), key}
	own, ok := o.rev[k]
	if !ok {
		return false
	}
	if own <= rev {
		delete(o.rev, k) // the watch has reached the own commit
	}
	return own >= rev
}

// LastCommitter is a Feed whose revisions also advance without a commit
// Watch delivers (etcd: any write to the cluster, the replicas' presence
// and elections among them). LastCommit returns the revision of the
// latest commit Watch delivers, the one a follower that has seen
// everything has reached.
type LastCommitter interface {
	LastCommit() (int64, error)
}

// Elector is a shared store that elects one of the processes using it to
// do work that must run in one place at a time (expiry, retention, audit
// checkpoints).
type Elector interface {
	// Lead campaigns for the leadership called name, as id; each time
	// this handle wins it, Lead runs fn with a context that ends when the
	// leadership is lost or ctx ends, and then campaigns again. It
	// returns when ctx ends. fn must return soon after its context ends.
	Lead(ctx context.Context, name, id string, fn func(context.Context)) error
}
