// Package live is the agent's live cluster view: one shared informer per
// followed kind keeps an in-memory picture of the cluster, and every
// viewer streams it (a snapshot, then ordered changes) filtered by what
// that viewer may list and watch. However many viewers there are, the
// apiserver sees one watch per kind.
//
// The agent's own service account reads nothing: the informers run as a
// dedicated identity the agent impersonates (Config.Client is built that
// way by the agent), which the cluster's admin grants list and watch on
// the followed kinds and create on subjectaccessreviews. Each viewer's
// filter asks the apiserver's authorizer (SubjectAccessReview) about the
// viewer's own impersonated identity.
package live

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/tools/cache"

	"github.com/clustral/clustral/proto"
)

// DefaultMaxDeltas is how many changes a Source keeps for viewers that
// resume; one further behind gets a snapshot.
const DefaultMaxDeltas = 4096

// Config configures a Source.
type Config struct {
	// Kinds are the kinds followed (see ParseKinds); empty means
	// DefaultKinds.
	Kinds []Kind
	// Client lists and watches the kinds, and the RBAC objects whose
	// changes drop the review cache.
	Client dynamic.Interface
	// Reviews answers the SubjectAccessReviews of viewers' identities;
	// nil means DynamicReviews(Client).
	Reviews Reviews
	// ReviewTTL is how long a review answer is reused; zero means
	// DefaultReviewTTL. Streams also check their viewer's access again
	// this often.
	ReviewTTL time.Duration
	// MaxDeltas is how many changes are kept for resuming viewers; zero
	// means DefaultMaxDeltas.
	MaxDeltas int
	// Now is the clock of the review cache; nil means time.Now.
	Now func() time.Time
	// Logger; nil means slog.Default().
	Logger *slog.Logger
}

// Source is the versioned in-memory picture of the followed kinds. It is
// safe for concurrent use: the informers write it, every stream reads it.
type Source struct {
	kinds   []Kind
	byName  map[string]Kind
	client  dynamic.Interface
	review  *reviewer
	ttl     time.Duration
	max     int
	epoch   string
	log     *slog.Logger
	watches int // upstream watches: kinds plus RBAC kinds

	mu      sync.Mutex
	synced  bool
	rev     uint64
	objs    map[proto.LiveKey]item
	deltas  []delta       // the latest changes, in revision order, without gaps
	changed chan struct{} // closed and replaced on every change
	access  chan struct{} // closed and replaced when access may have changed
	// snap is the objects at revision snap.rev, for the viewers that
	// need a snapshot: one copy, sorted once, whatever the number of
	// viewers that take it. nil once a change makes it stale.
	snap *snapshot

	viewers atomic.Int64 // open streams

	settleMu sync.Mutex
	settle   *time.Timer // asks the reviews again rbacSettle after an RBAC change
}

// rbacSettle is how long after an RBAC change the reviews are asked
// again: the apiserver's authorizer follows RBAC objects through a watch
// of its own, which may be a moment behind the agent's, so a review
// asked at once can still give the old answer.
const rbacSettle = time.Second

type item struct {
	rev uint64
	raw json.RawMessage
}

// snapshot is every object at revision rev, sorted by key on first use
// (sort). objs is read-only once sorted; streams share it.
type snapshot struct {
	rev  uint64
	once sync.Once
	objs []delta
}

// sorted returns the objects in key order.
func (sn *snapshot) sorted() []delta {
	sn.once.Do(func() {
		slices.SortFunc(sn.objs, func(a, b delta) int { return compareKeys(a.key, b.key) })
	})
	return sn.objs
}

// snapshotLocked returns the snapshot of the current revision, made if
// need be. s.mu must be held.
func (s *Source) snapshotLocked() *snapshot {
	if s.snap == nil || s.snap.rev != s.rev {
		sn := &snapshot{rev: s.rev, objs: make([]delta, 0, len(s.objs))}
		for k, it := range s.objs {
			sn.objs = append(sn.objs, delta{rev: it.rev, key: k, raw: it.raw})
		}
		s.snap = sn
	}
	return s.snap
}

type delta struct {
	rev uint64
	key proto.LiveKey
	del bool
	raw json.RawMessage
}

// rbacKinds are watched so that the review cache is dropped when RBAC
// changes.
var rbacKinds = []schema.GroupVersionResource{
	{Group: "rbac.authorization.k8s.io", Version: "v1", Resource: "roles"},
	{Group: "rbac.authorization.k8s.io", Version: "v1", Resource: "rolebindings"},
	{Group: "rbac.authorization.k8s.io", Version: "v1", Resource: "clusterroles"},
	{Group: "rbac.authorization.k8s.io", Version: "v1", Resource: "clusterrolebindings"},
}

// New returns a Source; Run fills it.
func New(c Config) (*Source, error) {
	if c.Client == nil {
		return nil, errors.New("live view: no Kubernetes client")
	}
	if c.Reviews == nil {
		c.Reviews = DynamicReviews(c.Client)
	}
	kinds := c.Kinds
	if len(kinds) == 0 {
		var err error
		if kinds, err = ParseKinds(nil); err != nil {
			return nil, err
		}
	}
	s := &Source{
		kinds:   kinds,
		byName:  make(map[string]Kind, len(kinds)),
		client:  c.Client,
		review:  newReviewer(c.Reviews, c.ReviewTTL, c.Now),
		ttl:     cmp.Or(c.ReviewTTL, DefaultReviewTTL),
		max:     cmp.Or(c.MaxDeltas, DefaultMaxDeltas),
		epoch:   rand.Text()[:12],
		log:     cmp.Or(c.Logger, slog.Default()),
		watches: len(kinds) + len(rbacKinds),
		objs:    make(map[proto.LiveKey]item),
		changed: make(chan struct{}),
		access:  make(chan struct{}),
	}
	for _, k := range kinds {
		s.byName[k.Name] = k
	}
	return s, nil
}

// Kinds returns the kinds followed.
func (s *Source) Kinds() []Kind { return slices.Clone(s.kinds) }

// Watches is how many watches Run keeps open at the apiserver: one per
// kind, and one per RBAC kind.
func (s *Source) Watches() int { return s.watches }

// Run starts one informer per kind and per RBAC kind, marks the Source
// synced once every informer has listed, and runs until ctx is done. It
// returns an error only if the informers cannot sync.
func (s *Source) Run(ctx context.Context) error {
	var (
		infs  []cache.SharedIndexInformer
		names []string
	)
	for _, k := range s.kinds {
		names = append(names, k.Name)
		inf, err := s.informer(k.GVR, cache.ResourceEventHandlerFuncs{
			AddFunc:    func(o any) { s.put(k, o, false) },
			UpdateFunc: func(_, o any) { s.put(k, o, false) },
			DeleteFunc: func(o any) { s.put(k, o, true) },
		})
		if err != nil {
			return err
		}
		infs = append(infs, inf)
	}
	for _, gvr := range rbacKinds {
		names = append(names, gvr.Resource+"."+gvr.Group)
		changed := func(any) {
			s.log.Debug("live view: RBAC changed; asking reviews again", "resource", gvr.Resource)
			s.RBACChanged()
		}
		inf, err := s.informer(gvr, cache.ResourceEventHandlerFuncs{
			AddFunc: changed, UpdateFunc: func(_, o any) { changed(o) }, DeleteFunc: changed,
		})
		if err != nil {
			return err
		}
		infs = append(infs, inf)
	}
	var wg sync.WaitGroup
	defer wg.Wait()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	for _, inf := range infs {
		wg.Go(func() { inf.RunWithContext(ctx) })
	}
	for i, inf := range infs {
		if !cache.WaitForCacheSync(ctx.Done(), inf.HasSynced) {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("live view: the list of %s did not sync; check that the live view's identity may list and watch it", names[i])
		}
	}
	s.mu.Lock()
	s.synced = true
	s.wakeLocked()
	s.mu.Unlock()
	s.log.Info("live view synced", "kinds", len(s.kinds), "objects", s.Len())
	<-ctx.Done()
	return nil
}

// informer is one shared informer of gvr, over the dynamic client: the
// one list and watch of that resource whatever the number of viewers.
func (s *Source) informer(gvr schema.GroupVersionResource, h cache.ResourceEventHandler) (cache.SharedIndexInformer, error) {
	r := s.client.Resource(gvr)
	lw := &cache.ListWatch{
		ListWithContextFunc: func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
			return r.List(ctx, o)
		},
		WatchFuncWithContext: func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
			return r.Watch(ctx, o)
		},
	}
	inf := cache.NewSharedIndexInformer(cache.ToListWatcherWithWatchListSemantics(lw, s.client), &unstructured.Unstructured{}, 0, cache.Indexers{})
	if err := inf.SetTransform(stripManagedFields); err != nil {
		return nil, fmt.Errorf("live view: informer of %s: %w", gvr.Resource, err)
	}
	if _, err := inf.AddEventHandler(h); err != nil {
		return nil, fmt.Errorf("live view: informer of %s: %w", gvr.Resource, err)
	}
	return inf, nil
}

// Collectors are the Source's Prometheus series, labelled with cluster:
// clustral_live_viewers (open streams), clustral_live_objects (objects
// held), clustral_live_changes_total (revisions), clustral_live_synced
// (1 once every informer has listed) and clustral_live_reviews_total
// (SubjectAccessReviews asked of the apiserver).
func (s *Source) Collectors(cluster string) []prometheus.Collector {
	cl := prometheus.Labels{"cluster": cluster}
	return []prometheus.Collector{
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "clustral_live_viewers", ConstLabels: cl,
			Help: "Open live view streams."}, func() float64 { return float64(s.viewers.Load()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "clustral_live_objects", ConstLabels: cl,
			Help: "Objects the live view holds."}, func() float64 { return float64(s.Len()) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "clustral_live_changes_total", ConstLabels: cl,
			Help: "Changes the live view has recorded (its revision)."}, func() float64 {
			s.mu.Lock()
			defer s.mu.Unlock()
			return float64(s.rev)
		}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "clustral_live_synced", ConstLabels: cl,
			Help: "1 once every informer of the live view has listed, else 0."}, func() float64 {
			if s.Synced() {
				return 1
			}
			return 0
		}),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "clustral_live_reviews_total", ConstLabels: cl,
			Help: "SubjectAccessReviews the live view asked of the apiserver (the rest came from its cache)."},
			func() float64 { return float64(s.review.asked.Load()) }),
	}
}

// Start runs Run on a goroutine of its own, logging its failure. The
// returned stop cancels it and waits for it to end.
func (s *Source) Start(ctx context.Context) (stop func()) {
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := s.Run(ctx); err != nil {
			s.log.Error("live view stopped", "err", err)
		}
	}()
	return func() { cancel(); <-done }
}

// stripManagedFields drops what no viewer needs and costs the most
// memory.
func stripManagedFields(o any) (any, error) {
	if u, ok := o.(*unstructured.Unstructured); ok {
		u.SetManagedFields(nil)
	}
	return o, nil
}

// put records a change of k's object o (an *unstructured.Unstructured, or
// a cache.DeletedFinalStateUnknown of one when deleted).
func (s *Source) put(k Kind, o any, del bool) {
	if d, ok := o.(cache.DeletedFinalStateUnknown); ok {
		o = d.Obj
	}
	u, ok := o.(*unstructured.Unstructured)
	if !ok {
		return
	}
	raw, err := json.Marshal(u)
	if err != nil {
		s.log.Warn("live view: object not encodable; skipped", "kind", k.Name, "name", u.GetName(), "err", err)
		return
	}
	s.apply(proto.LiveKey{Kind: k.Name, Namespace: u.GetNamespace(), Name: u.GetName()}, raw, del)
}

// apply records one change under the next revision.
func (s *Source) apply(key proto.LiveKey, raw json.RawMessage, del bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if del {
		if _, ok := s.objs[key]; !ok {
			return
		}
	}
	s.rev++
	s.snap = nil // the streams that hold it keep it
	if del {
		delete(s.objs, key)
	} else {
		s.objs[key] = item{rev: s.rev, raw: raw}
	}
	if len(s.deltas) >= 2*s.max {
		s.deltas = slices.Clone(s.deltas[len(s.deltas)-s.max:])
	}
	s.deltas = append(s.deltas, delta{rev: s.rev, key: key, del: del, raw: raw})
	s.wakeLocked()
}

func (s *Source) wakeLocked() {
	close(s.changed)
	s.changed = make(chan struct{})
}

// RBACChanged drops every cached review and has every stream check its
// viewer's access again, at once and rbacSettle after the last RBAC
// change. Run calls it on every change of an RBAC object.
func (s *Source) RBACChanged() {
	s.review.invalidate()
	s.AccessChanged()
	s.settleMu.Lock()
	defer s.settleMu.Unlock()
	if s.settle == nil {
		s.settle = time.AfterFunc(rbacSettle, func() {
			s.review.invalidate()
			s.AccessChanged()
		})
		return
	}
	s.settle.Reset(rbacSettle)
}

// AccessChanged has every stream check its viewer's access again (from
// cached reviews): the agent calls it when the network map changes, which
// may change a viewer's clustral restrictions.
func (s *Source) AccessChanged() {
	s.mu.Lock()
	defer s.mu.Unlock()
	close(s.access)
	s.access = make(chan struct{})
}

// Len is the number of objects held.
func (s *Source) Len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.objs)
}

// Synced reports whether every informer has listed.
func (s *Source) Synced() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.synced
}

// Allowed asks the apiserver (through the review cache) whether id may
// verb the resource of group in namespace.
func (s *Source) Allowed(ctx context.Context, id Identity, verb, group, resource, namespace string) (bool, error) {
	return s.review.allowed(ctx, id, verb, group, resource, namespace)
}
