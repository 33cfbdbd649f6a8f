package store

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
)

// presenceTTL is how long, in seconds, a replica's presence entries
// outlive it: after a crash, or once it is cut off from etcd, the other
// replicas see them go within about this long.
const presenceTTL = electionTTL

// presenceRetry is how long an announcer waits after etcd failed before
// it tries again.
const presenceRetry = time.Second

func (s *Etcd) presencePrefix() string { return s.cfg.Prefix + "/_live/" }

// Announce implements Presence: replica's entries are the keys
// <prefix>/_live/<replica>/<key>, on a lease of presenceTTL seconds that
// a goroutine keeps alive until ctx ends or Close begins, when it revokes
// the lease. A
// lease that expired anyway (etcd was out of reach) is replaced, and every
// entry written again under the new one.
func (s *Etcd) Announce(ctx context.Context, replica string) Announcer {
	a := &etcdAnnouncer{s: s, prefix: s.presencePrefix() + replica + "/", want: map[string]string{}, dirty: map[string]bool{}, wake: make(chan struct{}, 1)}
	// Close ends the announcements too, and waits for their lease to be
	// revoked.
	ctx, cancel := context.WithCancel(ctx)
	stop := context.AfterFunc(s.closing, cancel)
	s.announcers.Add(1)
	go func() {
		defer s.announcers.Done()
		defer stop()
		defer cancel()
		a.run(ctx)
	}()
	return a
}

type etcdAnnouncer struct {
	s      *Etcd
	prefix string

	mu    sync.Mutex
	want  map[string]string // the entries as they should be
	dirty map[string]bool   // keys whose stored state may differ from want
	wake  chan struct{}
}

func (a *etcdAnnouncer) Set(key, value string) {
	a.mu.Lock()
	a.want[key] = value
	a.dirty[key] = true
	a.mu.Unlock()
	a.poke()
}

func (a *etcdAnnouncer) Delete(key string) {
	a.mu.Lock()
	delete(a.want, key)
	a.dirty[key] = true
	a.mu.Unlock()
	a.poke()
}

func (a *etcdAnnouncer) poke() {
	select {
	case a.wake <- struct{}{}:
	default:
	}
}

// run holds a lease and writes the dirty entries under it until ctx ends.
func (a *etcdAnnouncer) run(ctx context.Context) {
	for ctx.Err() == nil {
		// The grant is bounded by ctx, so that Close (which waits for
		// this goroutine) does not wait on an etcd out of reach.
		sess, err := a.s.session(ctx, presenceTTL)
		if err != nil {
			sleepCtx(ctx, presenceRetry)
			continue
		}
		// The keys of an earlier lease are gone: write every entry.
		a.mu.Lock()
		for k := range a.want {
			a.dirty[k] = true
		}
		a.mu.Unlock()
		a.poke()
		a.hold(ctx, sess)
		sess.Close() // revokes the lease: the entries vanish at once
	}
}

// hold writes the dirty entries under sess's lease whenever there are
// some, until ctx ends or the lease is lost.
func (a *etcdAnnouncer) hold(ctx context.Context, sess *concurrency.Session) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-sess.Done():
			return
		case <-a.wake:
		}
		for a.flush(sess.Lease()) {
		}
		a.mu.Lock()
		failed := len(a.dirty) > 0
		a.mu.Unlock()
		if failed {
			sleepCtx(ctx, presenceRetry)
			a.poke()
		}
	}
}

// flush writes one transaction's worth of dirty entries and reports
// whether it wrote any and more are dirty.
func (a *etcdAnnouncer) flush(lease clientv3.LeaseID) bool {
	a.mu.Lock()
	var ops []clientv3.Op
	var keys []string
	for k := range a.dirty {
		if len(ops) == a.s.cfg.MaxTxnOps {
			break
		}
		if v, ok := a.want[k]; ok {
			ops = append(ops, clientv3.OpPut(a.prefix+k, v, clientv3.WithLease(lease)))
		} else {
			ops = append(ops, clientv3.OpDelete(a.prefix+k))
		}
		keys = append(keys, k)
		delete(a.dirty, k)
	}
	a.mu.Unlock()
	if len(ops) == 0 {
		return false
	}
	ctx, cancel := a.s.call()
	defer cancel()
	if _, err := a.s.cli.Txn(ctx).Then(ops...).Commit(); err != nil {
		a.mu.Lock()
		for _, k := range keys {
			a.dirty[k] = true
		}
		a.mu.Unlock()
		return false
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.dirty) > 0
}

// WatchPresence implements Presence with a read of <prefix>/_live/ and a
// watch from the revision it was read at.
func (s *Etcd) WatchPresence(ctx context.Context, fn func(PresenceEvent)) error {
	ctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer cancel()
	p := s.presencePrefix()
	rctx, rcancel := context.WithTimeout(ctx, s.cfg.RequestTimeout)
	resp, err := s.cli.Get(rctx, p, clientv3.WithPrefix())
	rcancel()
	if err != nil {
		return fmt.Errorf("read the replicas' presence under %s: %w", p, err)
	}
	fn(PresenceEvent{Reset: true})
	for _, kv := range resp.Kvs {
		if ev, ok := presenceEvent(p, string(kv.Key)); ok {
			ev.Value = string(kv.Value)
			fn(ev)
		}
	}
	wch := s.cli.Watch(ctx, p, clientv3.WithPrefix(), clientv3.WithRev(resp.Header.Revision+1))
	for wr := range wch {
		if err := wr.Err(); err != nil {
			return fmt.Errorf("watch the replicas' presence under %s: %w", p, err)
		}
		for _, e := range wr.Events {
			ev, ok := presenceEvent(p, string(e.Kv.Key))
			if !ok {
				continue
			}
			if e.Type == clientv3.EventTypeDelete {
				ev.Deleted = true
			} else {
				ev.Value = string(e.Kv.Value)
			}
			fn(ev)
		}
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	return fmt.Errorf("watch of the replicas' presence under %s ended", p)
}

// presenceEvent splits a presence key into its replica and entry key.
func presenceEvent(prefix, full string) (PresenceEvent, bool) {
	rest, ok := strings.CutPrefix(full, prefix)
	if !ok {
		return PresenceEvent{}, false
	}
	replica, key, ok := strings.Cut(rest, "/")
	if !ok || replica == "" || key == "" {
		return PresenceEvent{}, false
	}
	return PresenceEvent{Replica: replica, Key: key}, true
}

func sleepCtx(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

var _ Presence = (*Etcd)(nil)
