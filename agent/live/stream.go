package live

import (
	"bufio"
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/clustral/clustral/proto"
)

// Access decides whether a viewer may see the objects of kind k in
// namespace ("" for a cluster-scoped kind): whether they could list and
// watch them through the proxy. An error ends the stream.
type Access func(ctx context.Context, k Kind, namespace string) (bool, error)

// pingEvery is how often an idle stream sends a LivePing.
const pingEvery = 15 * time.Second

// Stream writes the live stream of one viewer to w, as JSON lines of
// proto.LiveEvent, until ctx is done (it then returns ctx's error) or a
// write fails. flush, if not nil, is called after each batch of lines.
//
// It waits for the Source to sync, then sends a snapshot, unless since
// names this Source's epoch and a revision whose later changes it still
// holds: then it sends only those. Every event goes through may, asked
// once per (kind, namespace) and again whenever access may have changed
// (RBACChanged, AccessChanged, and every ReviewTTL): when any answer
// differs, the viewer gets a new snapshot, so an object it may no longer
// see leaves its view.
func (s *Source) Stream(ctx context.Context, w io.Writer, flush func() error, since proto.LiveCursor, may Access) error {
	s.viewers.Add(1)
	defer s.viewers.Add(-1)
	v := &viewer{s: s, may: may, decisions: make(map[scope]bool), w: w}
	defer v.release()
	cur := since
	ping := time.NewTicker(pingEvery)
	defer ping.Stop()
	recheck := time.NewTicker(s.ttl)
	defer recheck.Stop()
	for {
		s.mu.Lock()
		synced, changed, access := s.synced, s.changed, s.access
		var (
			snap *snapshot
			ds   []delta
			rev  = s.rev
		)
		if synced {
			if cur.Epoch != s.epoch || !s.holdsLocked(cur.Rev) {
				snap = s.snapshotLocked()
			} else {
				i, _ := slices.BinarySearchFunc(s.deltas, cur.Rev+1, func(d delta, r uint64) int { return cmp.Compare(d.rev, r) })
				ds = s.deltas[i:len(s.deltas):len(s.deltas)] // never appended to in place
			}
		}
		s.mu.Unlock()

		if synced {
			var err error
			if snap != nil {
				err = v.snapshot(ctx, snap.sorted(), rev)
			} else {
				err = v.deltas(ctx, ds, cur.Rev, rev)
			}
			if err == nil && flush != nil {
				err = flush()
			}
			if err != nil {
				return err
			}
			cur = proto.LiveCursor{Epoch: s.epoch, Rev: rev}
		}

		checkAccess := false
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-changed:
		case <-access:
			checkAccess = synced
		case <-recheck.C:
			checkAccess = synced
		case <-ping.C:
			if err := v.write(proto.LiveEvent{Type: proto.LivePing, Epoch: s.epoch, Rev: cur.Rev}); err != nil {
				return err
			}
			if err := v.flush(); err != nil {
				return err
			}
			if flush != nil {
				if err := flush(); err != nil {
					return err
				}
			}
		}
		if checkAccess {
			lost, err := v.recheck(ctx)
			if err != nil {
				return err
			}
			if lost {
				s.log.Debug("live view: a viewer's access changed; sending a new snapshot")
				cur = proto.LiveCursor{}
			}
		}
	}
}

// holdsLocked reports whether every change after rev is still held.
func (s *Source) holdsLocked(rev uint64) bool {
	if rev > s.rev {
		return false
	}
	if rev == s.rev {
		return true
	}
	return len(s.deltas) > 0 && rev+1 >= s.deltas[0].rev
}

type scope struct{ kind, namespace string }

// viewer is one stream's state; it is used by its stream's goroutine
// only.
type viewer struct {
	s         *Source
	may       Access
	decisions map[scope]bool
	w         io.Writer
	buf       *lineBuffer // between write and flush only; nil while idle
}

// lineBuffer is where a stream's lines are encoded and batched. A stream
// holds one only from its first line of a batch to the flush, so the
// streams that wait (nearly all of them, nearly always) hold none.
type lineBuffer struct {
	bw   *bufio.Writer
	line bytes.Buffer
	enc  *json.Encoder   // into line
	ev   proto.LiveEvent // the event being encoded: boxing a copy would allocate
}

var lineBuffers = sync.Pool{New: func() any {
	lb := &lineBuffer{bw: bufio.NewWriterSize(nil, 8<<10)}
	lb.enc = json.NewEncoder(&lb.line)
	return lb
}}

// buffer returns the stream's line buffer, taking one from the pool if
// it holds none.
func (v *viewer) buffer() *lineBuffer {
	if v.buf == nil {
		v.buf = lineBuffers.Get().(*lineBuffer)
		v.buf.bw.Reset(v.w)
	}
	return v.buf
}

// flush writes the lines buffered to the stream and gives the buffer
// back to the pool.
func (v *viewer) flush() error {
	if v.buf == nil {
		return nil
	}
	err := v.buf.bw.Flush()
	v.release()
	return err
}

// release gives the line buffer back to the pool, dropping what it
// holds.
func (v *viewer) release() {
	if v.buf == nil {
		return
	}
	v.buf.bw.Reset(nil)
	if v.buf.line.Cap() <= 64<<10 { // one huge line does not stay pooled
		lineBuffers.Put(v.buf)
	}
	v.buf = nil
}

func (v *viewer) visible(ctx context.Context, key proto.LiveKey) (bool, error) {
	sc := scope{key.Kind, key.Namespace}
	if ok, known := v.decisions[sc]; known {
		return ok, nil
	}
	k, ok := v.s.byName[key.Kind]
	if !ok {
		return false, nil
	}
	ok, err := v.may(ctx, k, key.Namespace)
	if err != nil {
		return false, err
	}
	v.decisions[sc] = ok
	return ok, nil
}

// recheck asks may again for every scope decided so far and reports
// whether any answer changed.
func (v *viewer) recheck(ctx context.Context) (bool, error) {
	changed := false
	for _, sc := range slices.Collect(maps.Keys(v.decisions)) {
		ok, err := v.may(ctx, v.s.byName[sc.kind], sc.namespace)
		if err != nil {
			return false, err
		}
		if ok != v.decisions[sc] {
			changed = true
			v.decisions[sc] = ok
		}
	}
	return changed, nil
}

// snapshot sends objs, in key order, as the viewer's new view at rev.
func (v *viewer) snapshot(ctx context.Context, objs []delta, rev uint64) error {
	epoch := v.s.epoch
	if err := v.write(proto.LiveEvent{Type: proto.LiveSnapshot, Epoch: epoch, Rev: rev}); err != nil {
		return err
	}
	for _, o := range objs {
		ok, err := v.visible(ctx, o.key)
		if err != nil {
			return err
		}
		if !ok {
			continue
		}
		if err := v.write(proto.LiveEvent{Type: proto.LiveUpsert, Epoch: epoch, Rev: o.rev,
			Kind: o.key.Kind, Namespace: o.key.Namespace, Name: o.key.Name, Object: o.raw}); err != nil {
			return err
		}
	}
	if err := v.write(proto.LiveEvent{Type: proto.LiveSynced, Epoch: epoch, Rev: rev}); err != nil {
		return err
	}
	return v.flush()
}

// deltas sends the changes ds, which run from after the viewer's
// revision from to rev. If the last ones are not the viewer's to see, a
// LiveSynced tells it that it stands at rev.
func (v *viewer) deltas(ctx context.Context, ds []delta, from, rev uint64) error {
	epoch := v.s.epoch
	last := from
	for _, d := range ds {
		if d.rev > rev {
			break
		}
		ok, err := v.visible(ctx, d.key)
		if err != nil {
			return err
		}
		if !ok {
			continue
		}
		e := proto.LiveEvent{Type: proto.LiveUpsert, Epoch: epoch, Rev: d.rev,
			Kind: d.key.Kind, Namespace: d.key.Namespace, Name: d.key.Name, Object: d.raw}
		if d.del {
			e.Type = proto.LiveDelete
		}
		if err := v.write(e); err != nil {
			return err
		}
		last = d.rev
	}
	if last != rev {
		if err := v.write(proto.LiveEvent{Type: proto.LiveSynced, Epoch: epoch, Rev: rev}); err != nil {
			return err
		}
	}
	return v.flush()
}

// write writes e as one line. The object, already JSON, is spliced in
// rather than re-encoded, and the line is encoded into the stream's
// buffer: writing an event allocates nothing.
func (v *viewer) write(e proto.LiveEvent) error {
	lb := v.buffer()
	obj := e.Object
	lb.ev, lb.ev.Object = e, nil
	lb.line.Reset()
	if err := lb.enc.Encode(&lb.ev); err != nil {
		return fmt.Errorf("encode live event: %w", err)
	}
	b := lb.line.Bytes() // {...}\n
	if len(obj) == 0 {
		_, err := lb.bw.Write(b)
		return err
	}
	// The object goes to the buffer as it is: copying it into the line
	// first would make garbage of every object sent to every viewer.
	lb.bw.Write(b[:len(b)-2])
	lb.bw.WriteString(`,"object":`)
	lb.bw.Write(obj)
	_, err := lb.bw.WriteString("}\n")
	return err
}

func compareKeys(a, b proto.LiveKey) int {
	if c := cmp.Compare(a.Kind, b.Kind); c != 0 {
		return c
	}
	if c := cmp.Compare(a.Namespace, b.Namespace); c != 0 {
		return c
	}
	return cmp.Compare(a.Name, b.Name)
}
