package live

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	authorizationv1 "k8s.io/api/authorization/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
)

// Reviews creates SubjectAccessReviews; client-go's typed
// SubjectAccessReviewInterface is one, and DynamicReviews makes one of a
// dynamic client.
type Reviews interface {
	Create(ctx context.Context, sar *authorizationv1.SubjectAccessReview, opts metav1.CreateOptions) (*authorizationv1.SubjectAccessReview, error)
}

// DynamicReviews creates SubjectAccessReviews through c.
func DynamicReviews(c dynamic.Interface) Reviews { return dynamicReviews{c} }

type dynamicReviews struct{ c dynamic.Interface }

var sarResource = schema.GroupVersionResource{Group: "authorization.k8s.io", Version: "v1", Resource: "subjectaccessreviews"}

func (d dynamicReviews) Create(ctx context.Context, sar *authorizationv1.SubjectAccessReview, opts metav1.CreateOptions) (*authorizationv1.SubjectAccessReview, error) {
	sar = sar.DeepCopy()
	sar.APIVersion, sar.Kind = "authorization.k8s.io/v1", "SubjectAccessReview"
	m, err := runtime.DefaultUnstructuredConverter.ToUnstructured(sar)
	if err != nil {
		return nil, err
	}
	res, err := d.c.Resource(sarResource).Create(ctx, &unstructured.Unstructured{Object: m}, opts)
	if err != nil {
		return nil, err
	}
	var out authorizationv1.SubjectAccessReview
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(res.Object, &out); err != nil {
		return nil, fmt.Errorf("decode SubjectAccessReview: %w", err)
	}
	return &out, nil
}

// DefaultReviewTTL is how long a SubjectAccessReview answer is reused.
// Changes to RBAC objects drop every answer at once; the TTL bounds the
// staleness of what the agent cannot see change (e.g. an authorization
// webhook).
const DefaultReviewTTL = 5 * time.Second

// Identity is a Kubernetes identity as the proxy impersonates it.
type Identity struct {
	User   string
	Groups []string
}

// reviewer asks the apiserver's authorizer, by SubjectAccessReview,
// whether an identity may do something, and keeps each answer for ttl or
// until invalidate. It is safe for concurrent use; concurrent questions
// with the same key share one review.
type reviewer struct {
	client Reviews
	ttl    time.Duration
	now    func() time.Time

	asked atomic.Int64 // reviews sent to the apiserver

	mu      sync.Mutex
	gen     uint64 // advances on invalidate
	answers map[string]*answer
}

type answer struct {
	done    chan struct{} // closed when allowed and err are set
	allowed bool
	err     error
	expires time.Time
	gen     uint64
}

func newReviewer(c Reviews, ttl time.Duration, now func() time.Time) *reviewer {
	if ttl <= 0 {
		ttl = DefaultReviewTTL
	}
	if now == nil {
		now = time.Now
	}
	return &reviewer{client: c, ttl: ttl, now: now, answers: make(map[string]*answer)}
}

// pruneAt is the number of answers at which expired ones are dropped
// before a new one is kept, so that answers nobody asks for again do not
// pile up.
const pruneAt = 4096

func (r *reviewer) pruneLocked() {
	now := r.now()
	for k, a := range r.answers {
		select {
		case <-a.done:
			if !now.Before(a.expires) {
				delete(r.answers, k)
			}
		default:
		}
	}
}

// invalidate drops every answer; reviews in flight are not kept.
func (r *reviewer) invalidate() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.gen++
	clear(r.answers)
}

// allowed reports whether id may verb the resource of group in namespace
// ("" for cluster scope or all namespaces).
func (r *reviewer) allowed(ctx context.Context, id Identity, verb, group, resource, namespace string) (bool, error) {
	key := strings.Join([]string{id.User, strings.Join(id.Groups, "\x01"), verb, group, resource, namespace}, "\x00")
	r.mu.Lock()
	a := r.answers[key]
	if a != nil {
		select {
		case <-a.done:
			if a.err != nil || !r.now().Before(a.expires) {
				a = nil
			}
		default: // in flight: wait for it
		}
	}
	if a != nil {
		r.mu.Unlock()
		select {
		case <-a.done:
			return a.allowed, a.err
		case <-ctx.Done():
			return false, ctx.Err()
		}
	}
	if len(r.answers) >= pruneAt {
		r.pruneLocked()
	}
	a = &answer{done: make(chan struct{}), gen: r.gen}
	r.answers[key] = a
	r.mu.Unlock()

	sar := &authorizationv1.SubjectAccessReview{Spec: authorizationv1.SubjectAccessReviewSpec{
		User:   id.User,
		Groups: id.Groups,
		ResourceAttributes: &authorizationv1.ResourceAttributes{
			Namespace: namespace, Verb: verb, Group: group, Resource: resource,
		},
	}}
	r.asked.Add(1)
	res, err := r.client.Create(ctx, sar, metav1.CreateOptions{})
	if err != nil {
		a.err = fmt.Errorf("review whether %s may %s %s in namespace %q: %w", id.User, verb, resource, namespace, err)
	} else {
		a.allowed = res.Status.Allowed && !res.Status.Denied
	}
	a.expires = r.now().Add(r.ttl)
	close(a.done)
	r.mu.Lock()
	if a.err != nil || r.gen != a.gen {
		if r.answers[key] == a {
			delete(r.answers, key)
		}
	}
	r.mu.Unlock()
	return a.allowed, a.err
}
