package keyrate

import (
	"fmt"
	"testing"
	"time"
)

func TestTakeAndEvict(t *testing.T) {
	t0 := time.Unix(1000, 0)
	l := New[string](10, 5, 0) // full again 500ms after the last token
	for i := range 5 {
		if _, ok := l.Take("a", t0); !ok {
			t.Fatalf("token %d refused within the burst", i)
		}
	}
	wait, ok := l.Take("a", t0)
	if ok || wait != 100*time.Millisecond {
		t.Fatalf("over the burst: wait %v ok %v, want 100ms false", wait, ok)
	}
	if _, ok := l.Take("b", t0); !ok {
		t.Fatal("another key shares a's bucket")
	}
	if w, ok := l.Ready("a", t0); ok || w != 100*time.Millisecond {
		t.Fatalf("Ready(a) = %v %v, want 100ms false", w, ok)
	}
	if _, ok := l.Ready("a", t0.Add(100*time.Millisecond)); !ok {
		t.Fatal("Ready(a) after a refill = false")
	}
	l.Evict(t0.Add(499 * time.Millisecond))
	if l.Len() != 2 {
		t.Fatalf("evicted a bucket that is not full yet: %d left", l.Len())
	}
	l.Evict(t0.Add(500 * time.Millisecond))
	if l.Len() != 0 {
		t.Fatalf("%d buckets left after they are full again", l.Len())
	}
}

// TestBoundedKeys: beyond maxKeys, new keys share the overflow bucket, so
// memory stays bounded and a flood from many keys is limited as a whole.
func TestBoundedKeys(t *testing.T) {
	t0 := time.Unix(1000, 0)
	l := New[string](1, 2, 3)
	for i := range 3 {
		l.Take(fmt.Sprint("k", i), t0)
	}
	passed := 0
	for i := range 100 {
		if _, ok := l.Take(fmt.Sprint("flood", i), t0); ok {
			passed++
		}
	}
	if l.Len() != 3 || passed != 2 {
		t.Fatalf("%d buckets, %d of 100 new keys passed; want 3 and the overflow burst of 2", l.Len(), passed)
	}
	// Once the first buckets are full again, new keys get their own.
	if _, ok := l.Take("late", t0.Add(3*time.Second)); !ok || l.Len() != 1 {
		t.Fatalf("after eviction: ok %v, %d buckets", ok, l.Len())
	}
}

func TestRetryAfter(t *testing.T) {
	for _, tt := range []struct {
		wait time.Duration
		want int
	}{
		{0, 1}, {-time.Second, 1}, {time.Millisecond, 1}, {time.Second, 1}, {1500 * time.Millisecond, 2}, {48 * time.Hour, 86400},
	} {
		if got := RetryAfter(tt.wait); got != tt.want {
			t.Errorf("RetryAfter(%v) = %d, want %d", tt.wait, got, tt.want)
		}
	}
}
