package storetest

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/clustral/clustral/coordinator/store"
	"github.com/clustral/clustral/pkg/testkit"
)

// PresenceOptions are what RunPresence needs besides a store.
type PresenceOptions struct {
	// Replica opens a second handle on p's data, as another coordinator
	// replica does.
	Replica func(t *testing.T, p store.Presence) store.Presence
	// Crash, if set, announces key=value as replica on p's data from a
	// handle that kill then ends as a crash would, without ending its
	// announcements (on etcd: a process killed with SIGKILL). Its entries
	// must then vanish within Expiry.
	Crash  func(t *testing.T, p store.Presence, replica, key, value string) (kill func())
	Expiry time.Duration
}

// RunPresence runs the conformance suite of store.Presence: one
// replica's announcements reach another's watch, in order per key, and
// vanish when the announcing replica ends them or dies. open must return
// a new, empty store for each call and close it in t.Cleanup.
func RunPresence(t *testing.T, open func(t *testing.T) store.Presence, o PresenceOptions) {
	t.Run("AnnounceWatchEnd", func(t *testing.T) { testPresence(t, open(t), o) })
	if o.Crash != nil {
		t.Run("Crash", func(t *testing.T) { testPresenceCrash(t, open(t), o) })
	}
}

// presenceView follows a presence watch into a map of replica/key →
// value.
type presenceView struct {
	mu     sync.Mutex
	m      map[string]string
	resets int
}

func watchPresence(t *testing.T, p store.Presence) *presenceView {
	t.Helper()
	v := &presenceView{m: map[string]string{}}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		for ctx.Err() == nil {
			p.WatchPresence(ctx, func(ev store.PresenceEvent) {
				v.mu.Lock()
				defer v.mu.Unlock()
				switch {
				case ev.Reset:
					clear(v.m)
					v.resets++
				case ev.Deleted:
					delete(v.m, ev.Replica+"/"+ev.Key)
				default:
					v.m[ev.Replica+"/"+ev.Key] = ev.Value
				}
			})
		}
	}()
	t.Cleanup(func() { cancel(); <-done })
	return v
}

// waitFor waits until the view is want.
func (v *presenceView) waitFor(t *testing.T, within time.Duration, what string, want map[string]string) {
	t.Helper()
	last := ""
	testkit.WaitForWithin(t, within, what, func() bool {
		v.mu.Lock()
		got := maps.Clone(v.m)
		v.mu.Unlock()
		if maps.Equal(got, want) {
			return true
		}
		// Each view once, so that a timeout shows where it stopped.
		if d := describeView(got); d != last {
			last = d
			t.Logf("%s: presence is %s, want %s", what, d, describeView(want))
		}
		return false
	})
}

// describeView lists the first entries of m and how many it holds.
func describeView(m map[string]string) string {
	var out []string
	for _, k := range slices.Sorted(maps.Keys(m)) {
		if len(out) == 4 {
			out = append(out, "...")
			break
		}
		out = append(out, fmt.Sprintf("%s=%q", k, m[k]))
	}
	return fmt.Sprintf("%d entries %v", len(m), out)
}

func testPresence(t *testing.T, p store.Presence, o PresenceOptions) {
	other := o.Replica(t, p)
	early := watchPresence(t, other)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	a := p.Announce(ctx, "r1")
	a.Set("peer", "10.0.0.1:7947")
	a.Set("relay/k1", "")
	a.Set("relay/k2", "")
	a.Delete("relay/k2")
	a.Set("peer", "10.0.0.2:7947") // a later value wins
	want := map[string]string{"r1/peer": "10.0.0.2:7947", "r1/relay/k1": ""}
	early.waitFor(t, 5*time.Second, "a watch open before the announcements", want)
	// A watch opened later lists what is there.
	late := watchPresence(t, other)
	late.waitFor(t, 5*time.Second, "a watch opened after them", want)
	// Many changes at once, more than one etcd transaction holds.
	for i := range 300 {
		a.Set(fmt.Sprintf("stream/n%03d", i), "")
		want[fmt.Sprintf("r1/stream/n%03d", i)] = ""
	}
	for i := range 150 {
		a.Delete(fmt.Sprintf("stream/n%03d", i))
		delete(want, fmt.Sprintf("r1/stream/n%03d", i))
	}
	late.waitFor(t, 10*time.Second, "after 300 entries set and 150 deleted", want)
	// The end of the announcements removes every entry.
	cancel()
	late.waitFor(t, 5*time.Second, "after the announcements ended", map[string]string{})
	early.waitFor(t, 5*time.Second, "after the announcements ended", map[string]string{})
}

func testPresenceCrash(t *testing.T, p store.Presence, o PresenceOptions) {
	v := watchPresence(t, p)
	kill := o.Crash(t, p, "doomed", "peer", "10.0.0.3:7947")
	v.waitFor(t, 10*time.Second, "the announcement", map[string]string{"doomed/peer": "10.0.0.3:7947"})
	start := time.Now()
	kill()
	v.waitFor(t, o.Expiry, "after the announcing handle died", map[string]string{})
	t.Logf("the entries of a dead handle vanished after %s", time.Since(start).Round(100*time.Millisecond))
}
