package store

import (
	"context"
	"maps"
	"slices"
	"sync"
)

// Presence is a shared store's register of what each live replica holds
// in memory alone: its address for the other replicas, the nodes attached
// to its relay, the agents streaming from it. An entry lives only as long
// as the replica that announced it: it vanishes when the replica ends its
// announcements, dies, or loses the store for longer than a few seconds
// (on etcd, the entries are keys under the replica's lease).
type Presence interface {
	// Announce starts the announcements of replica, which end when ctx
	// ends: its entries are then removed. The Announcer's methods never
	// block on the store.
	Announce(ctx context.Context, replica string) Announcer
	// WatchPresence calls fn, on the calling goroutine, with a Reset
	// event followed by every entry present, then with each change, until
	// ctx ends or the store fails; it returns the error. After an error
	// the caller calls it again, and gets a Reset and a fresh listing.
	WatchPresence(ctx context.Context, fn func(PresenceEvent)) error
}

// Announcer sets and deletes one replica's presence entries. Its methods
// return at once and are safe for concurrent use: the entries reach the
// store soon after, coalesced, and are written again whenever the
// replica's lease had to be renewed.
type Announcer interface {
	Set(key, value string)
	Delete(key string)
}

// PresenceEvent is one change to the presence entries.
type PresenceEvent struct {
	// Reset says that the listing starts again: forget every entry.
	Reset   bool
	Replica string
	Key     string
	Value   string
	Deleted bool
}

// memPresence is the presence register shared by a Mem's handles.
type memPresence struct {
	mu       sync.Mutex
	entries  map[[2]string]string // replica, key → value
	watchers map[chan PresenceEvent]bool
}

// presence returns the core's register, creating it.
func (c *memCore) presence() *memPresence {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.pres == nil {
		c.pres = &memPresence{entries: map[[2]string]string{}, watchers: map[chan PresenceEvent]bool{}}
	}
	return c.pres
}

// publish records ev and sends it to every watcher. Called with p.mu
// held.
func (p *memPresence) publish(ev PresenceEvent) {
	k := [2]string{ev.Replica, ev.Key}
	if ev.Deleted {
		if _, ok := p.entries[k]; !ok {
			return
		}
		delete(p.entries, k)
	} else {
		if v, ok := p.entries[k]; ok && v == ev.Value {
			return
		}
		p.entries[k] = ev.Value
	}
	for w := range p.watchers {
		w <- ev
	}
}

type memAnnouncer struct {
	p       *memPresence
	replica string
	ctx     context.Context
}

func (a memAnnouncer) Set(key, value string) {
	a.p.mu.Lock()
	defer a.p.mu.Unlock()
	if a.ctx.Err() == nil {
		a.p.publish(PresenceEvent{Replica: a.replica, Key: key, Value: value})
	}
}

func (a memAnnouncer) Delete(key string) {
	a.p.mu.Lock()
	defer a.p.mu.Unlock()
	a.p.publish(PresenceEvent{Replica: a.replica, Key: key, Deleted: true})
}

// Announce implements Presence: the entries vanish when ctx ends, as a
// lease's keys do.
func (s *Mem) Announce(ctx context.Context, replica string) Announcer {
	p := s.core.presence()
	context.AfterFunc(ctx, func() {
		p.mu.Lock()
		defer p.mu.Unlock()
		for _, k := range slices.Collect(maps.Keys(p.entries)) {
			if k[0] == replica {
				p.publish(PresenceEvent{Replica: replica, Key: k[1], Deleted: true})
			}
		}
	})
	return memAnnouncer{p: p, replica: replica, ctx: ctx}
}

// WatchPresence implements Presence.
func (s *Mem) WatchPresence(ctx context.Context, fn func(PresenceEvent)) error {
	p := s.core.presence()
	// Buffered generously: publish sends under p.mu, and a test's
	// replicas announce little.
	ch := make(chan PresenceEvent, 1<<16)
	p.mu.Lock()
	ch <- PresenceEvent{Reset: true}
	for k, v := range p.entries {
		ch <- PresenceEvent{Replica: k[0], Key: k[1], Value: v}
	}
	p.watchers[ch] = true
	p.mu.Unlock()
	defer func() {
		p.mu.Lock()
		delete(p.watchers, ch)
		p.mu.Unlock()
	}()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case ev := <-ch:
			fn(ev)
		}
	}
}

var _ Presence = (*Mem)(nil)
