package mesh

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"

	authnv1 "k8s.io/api/authentication/v1"
	"k8s.io/client-go/rest"

	"github.com/clustral/clustral/agent/live"
)

// TestInjectionIgnored: nothing a client puts in its request changes who
// the cluster sees (security invariant 1). alice is a viewer; every
// attempt to claim more must still be judged as alice.
func TestInjectionIgnored(t *testing.T) {
	_, a, _ := newUpUser(t, alice, "viewer")
	ns := suite.NewNamespace(t)

	t.Run("kubectl --as", func(t *testing.T) {
		as := []string{"--context", "clustral-kind", "--as=admin", "--as-group=system:masters"}
		res, err := a.RunKubectl(append(as, "auth", "whoami", "-o", "json")...)
		if err != nil {
			t.Fatal(err)
		}
		checkSelf(t, []byte(res.Stdout))
		_, err = a.RunKubectl(append(as, "create", "configmap", "as-admin", "-n", ns)...)
		if err == nil || !strings.Contains(err.Error(), `User "alice@example.com" cannot create resource "configmaps"`) {
			t.Errorf("create configmap --as=admin: err = %v, want forbidden for alice", err)
		}
	})

	cfg := a.RESTConfig()
	if cfg.Proxy == nil {
		t.Fatal("the clustral-kind context has no proxy-url")
	}
	tests := []struct {
		name string
		hdr  http.Header
	}{
		{"Impersonate-User", http.Header{"Impersonate-User": {"admin"}}},
		{"Impersonate-Group", http.Header{"Impersonate-Group": {"system:masters"}}},
		{"Impersonate-User and Group", http.Header{"Impersonate-User": {"admin"}, "Impersonate-Group": {"system:masters"}}},
		{"Impersonate-Uid and Extra", http.Header{"Impersonate-User": {"admin"}, "Impersonate-Uid": {"0"}, "Impersonate-Extra-Scopes": {"all"}}},
		{"Authorization", http.Header{"Authorization": {"Bearer " + suite.Env.APIServer.AdminToken}}},
		{"Connection names Impersonate-User", http.Header{"Connection": {"Impersonate-User"}, "Impersonate-User": {"admin"}}},
		{"front proxy headers", http.Header{"X-Remote-User": {"admin"}, "X-Remote-Group": {"system:masters"}}},
		{"lower case", http.Header{"impersonate-user": {"admin"}, "impersonate-group": {"system:masters"}}},
	}
	// kubectl's own transport offers h2 and http/1.1 and is served
	// HTTP/1.1; a client that offers only h2 is served HTTP/2, with its
	// own header handling, so both are tried.
	for _, tt := range tests {
		for _, major := range []int{1, 2} {
			if major == 2 && tt.hdr.Get("Connection") != "" {
				continue // HTTP/2 has no Connection header
			}
			t.Run(fmt.Sprintf("%s/HTTP%d", tt.name, major), func(t *testing.T) { checkInjection(t, cfg, major, ns, tt.hdr) })
		}
	}
}

// checkInjection sends a SelfSubjectReview and a configmap creation with
// hdr added, and fails t unless both are judged as alice.
func checkInjection(t *testing.T, cfg *rest.Config, major int, ns string, hdr http.Header) {
	c := &http.Client{Transport: headerTransport(t, cfg, major, hdr)}
	review := `{"apiVersion":"authentication.k8s.io/v1","kind":"SelfSubjectReview"}`
	status, body := post(t, c, major, cfg.Host+"/apis/authentication.k8s.io/v1/selfsubjectreviews", review)
	if status != http.StatusCreated {
		t.Fatalf("SelfSubjectReview: %d %s", status, body)
	}
	checkSelf(t, body)

	cm := `{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"injected"}}`
	status, body = post(t, c, major, cfg.Host+"/api/v1/namespaces/"+ns+"/configmaps", cm)
	if status != http.StatusForbidden || !bytes.Contains(body, []byte(`User \"alice@example.com\" cannot create resource \"configmaps\"`)) {
		t.Errorf("create configmap: %d %s, want 403 from the apiserver for alice", status, body)
	}
}

// checkSelf fails t unless review, a SelfSubjectReview as JSON, shows
// alice with the viewer role's groups only.
func checkSelf(t *testing.T, review []byte) {
	t.Helper()
	var r authnv1.SelfSubjectReview
	if err := json.Unmarshal(review, &r); err != nil {
		t.Fatalf("decode SelfSubjectReview: %v: %s", err, review)
	}
	u := r.Status.UserInfo
	want := []string{"clustral:viewers", "system:authenticated"}
	if u.Username != alice.Email || strings.Join(u.Groups, ",") != strings.Join(want, ",") || u.UID != "" || len(u.Extra) != 0 {
		t.Errorf("the cluster sees %+v, want user %s with groups %v and nothing else", u, alice.Email, want)
	}
}

// headerTransport is a transport of cfg that adds hdr to every request:
// kubectl's own for HTTP/1.1 (major 1), or the live view's, which offers
// only h2 in ALPN (major 2).
func headerTransport(t *testing.T, cfg *rest.Config, major int, hdr http.Header) http.RoundTripper {
	t.Helper()
	var rt http.RoundTripper
	if major == 2 {
		hc, err := live.HTTPClient(cfg)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(hc.CloseIdleConnections)
		rt = hc.Transport
	} else {
		var err error
		if rt, err = rest.TransportFor(cfg); err != nil {
			t.Fatal(err)
		}
	}
	return roundTripper(func(r *http.Request) (*http.Response, error) {
		r = r.Clone(r.Context())
		for k, v := range hdr {
			r.Header[k] = v // as given, not canonicalized
		}
		return rt.RoundTrip(r)
	})
}

type roundTripper func(*http.Request) (*http.Response, error)

func (f roundTripper) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// post sends body as JSON and returns the response's status and body. It
// fails t unless the response came over HTTP/major.
func post(t *testing.T, c *http.Client, major int, url, body string) (int, []byte) {
	t.Helper()
	req, err := http.NewRequestWithContext(context.Background(), "POST", url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.ProtoMajor != major {
		t.Fatalf("POST %s: response over %s, want HTTP/%d", url, resp.Proto, major)
	}
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}
