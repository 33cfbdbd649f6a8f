package harness

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"strings"

	"github.com/clustral/clustral/pkg/testkit"
	"golang.org/x/net/html"
)

// Browser plays the user's browser in an interactive OIDC login at Dex:
// it follows redirects, keeps cookies, fills in Dex's login form and
// approves the grant. It is not safe for concurrent use.
type Browser struct {
	// Client carries the cookie jar and the trusted CAs. Its
	// CheckRedirect is replaced per request.
	Client *http.Client
}

// NewBrowser returns a Browser with an empty cookie jar trusting the given
// PEM CAs (and no others).
func NewBrowser(caPEMs ...[]byte) *Browser {
	c := testkit.HTTPClient(caPEMs...)
	c.Jar, _ = cookiejar.New(nil)
	return &Browser{Client: c}
}

// Browser returns a Browser trusting Dex's CA and the extra PEM CAs (e.g.
// the coordinator's).
func (d *Dex) Browser(extraCAPEM ...[]byte) *Browser {
	return NewBrowser(append([][]byte{d.CAPEM}, extraCAPEM...)...)
}

// ErrLoginRejected is returned when Dex shows its login form again after
// the credentials were posted.
var ErrLoginRejected = errors.New("login rejected")

// Login opens authURL, signs in with login and password, and follows
// redirects until one points at a URL starting with redirectPrefix (the
// OAuth2 redirect URI), which it returns without requesting it. The
// returned URL carries the code and state (or error) parameters.
func (b *Browser) Login(ctx context.Context, authURL, login, password, redirectPrefix string) (*url.URL, error) {
	if redirectPrefix == "" {
		return nil, errors.New("browser login: empty redirect prefix")
	}
	u, resp, err := b.login(ctx, authURL, login, password, redirectPrefix)
	if err != nil {
		return nil, err
	}
	if u == nil {
		resp.Body.Close()
		return nil, fmt.Errorf("browser login: ended at %s (%s) without a redirect to %s", resp.Request.URL, resp.Status, redirectPrefix)
	}
	return u, nil
}

// LoginFollow is like Login but follows every redirect, including into the
// redirect URI, and returns the final response, which the caller must
// close.
func (b *Browser) LoginFollow(ctx context.Context, authURL, login, password string) (*http.Response, error) {
	_, resp, err := b.login(ctx, authURL, login, password, "")
	return resp, err
}

// login drives the flow. It returns either the redirect URL matching
// stopAt, or the first response that is not a Dex form.
func (b *Browser) login(ctx context.Context, authURL, login, password, stopAt string) (*url.URL, *http.Response, error) {
	var stopped *url.URL
	c := *b.Client
	c.CheckRedirect = func(req *http.Request, via []*http.Request) error {
		if stopAt != "" && strings.HasPrefix(req.URL.String(), stopAt) {
			stopped = req.URL
			return http.ErrUseLastResponse
		}
		if len(via) >= 20 {
			return errors.New("stopped after 20 redirects")
		}
		return nil
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, authURL, nil)
	if err != nil {
		return nil, nil, fmt.Errorf("browser login: %w", err)
	}
	postedCredentials := false
	for step := 0; step < 10; step++ {
		resp, err := c.Do(req)
		if err != nil {
			return nil, nil, fmt.Errorf("browser login: %w", err)
		}
		if stopped != nil {
			resp.Body.Close()
			return stopped, nil, nil
		}
		if !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/html") {
			return nil, resp, nil
		}
		body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		resp.Body.Close()
		if err != nil {
			return nil, nil, fmt.Errorf("browser login: read %s: %w", resp.Request.URL, err)
		}
		forms, err := parseForms(string(body))
		if err != nil {
			return nil, nil, fmt.Errorf("browser login: parse %s: %w", resp.Request.URL, err)
		}
		var next *form
		switch {
		case findForm(forms, "password") != nil:
			if postedCredentials {
				return nil, nil, fmt.Errorf("browser login as %s: %w (%s)", login, ErrLoginRejected, pageText(string(body)))
			}
			next = findForm(forms, "password")
			next.set("login", login)
			next.set("password", password)
			postedCredentials = true
		case findForm(forms, "approval") != nil:
			next = findFormValue(forms, "approval", "approve")
			if next == nil {
				return nil, nil, fmt.Errorf("browser login: approval page at %s without an approve form", resp.Request.URL)
			}
		}
		if next == nil {
			if resp.StatusCode >= 400 {
				return nil, nil, fmt.Errorf("browser login: %s at %s: %s", resp.Status, resp.Request.URL, pageText(string(body)))
			}
			// Not a Dex form: hand the page back with its body.
			resp.Body = io.NopCloser(strings.NewReader(string(body)))
			return nil, resp, nil
		}
		action, err := resp.Request.URL.Parse(next.action)
		if err != nil {
			return nil, nil, fmt.Errorf("browser login: form action %q: %w", next.action, err)
		}
		if strings.EqualFold(next.method, http.MethodPost) {
			req, err = http.NewRequestWithContext(ctx, http.MethodPost, action.String(), strings.NewReader(next.values.Encode()))
			if err == nil {
				req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
			}
		} else {
			action.RawQuery = next.values.Encode()
			req, err = http.NewRequestWithContext(ctx, http.MethodGet, action.String(), nil)
		}
		if err != nil {
			return nil, nil, fmt.Errorf("browser login: %w", err)
		}
	}
	return nil, nil, errors.New("browser login: too many pages")
}

// Submit fills in and submits the form of an HTML page that has a control
// named control, as a browser does when a button is pressed: set holds the
// values typed (and the pressed button's name and value), the other
// controls keep theirs, and the request carries the page's Origin. page is
// a response Login or LoginFollow returned; its body is read. Redirects
// are followed; the caller closes the returned response.
func (b *Browser) Submit(ctx context.Context, page *http.Response, control string, set url.Values) (*http.Response, error) {
	body, err := io.ReadAll(io.LimitReader(page.Body, 1<<20))
	page.Body.Close()
	if err != nil {
		return nil, fmt.Errorf("submit: read %s: %w", page.Request.URL, err)
	}
	forms, err := parseForms(string(body))
	if err != nil {
		return nil, fmt.Errorf("submit: parse %s: %w", page.Request.URL, err)
	}
	f := findForm(forms, control)
	if f == nil {
		return nil, fmt.Errorf("submit: no form with %q at %s: %s", control, page.Request.URL, pageText(string(body)))
	}
	for k, v := range set {
		f.values[k] = v
	}
	action, err := page.Request.URL.Parse(f.action)
	if err != nil {
		return nil, fmt.Errorf("submit: form action %q: %w", f.action, err)
	}
	var req *http.Request
	if strings.EqualFold(f.method, http.MethodPost) {
		req, err = http.NewRequestWithContext(ctx, http.MethodPost, action.String(), strings.NewReader(f.values.Encode()))
		if err == nil {
			req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
			req.Header.Set("Origin", page.Request.URL.Scheme+"://"+page.Request.URL.Host)
		}
	} else {
		action.RawQuery = f.values.Encode()
		req, err = http.NewRequestWithContext(ctx, http.MethodGet, action.String(), nil)
	}
	if err != nil {
		return nil, fmt.Errorf("submit: %w", err)
	}
	return b.Client.Do(req)
}

// form is one HTML form with its successful controls' values.
type form struct {
	action string
	method string
	names  map[string]bool
	values url.Values
}

func (f *form) set(name, value string) { f.values.Set(name, value) }

// findForm returns the first form with a control named name.
func findForm(forms []*form, name string) *form {
	for _, f := range forms {
		if f.names[name] {
			return f
		}
	}
	return nil
}

// findFormValue returns the first form whose control name has value.
func findFormValue(forms []*form, name, value string) *form {
	for _, f := range forms {
		if f.values.Get(name) == value {
			return f
		}
	}
	return nil
}

// parseForms returns the forms of an HTML document with the values of
// their input elements (submit buttons excluded).
func parseForms(doc string) ([]*form, error) {
	root, err := html.Parse(strings.NewReader(doc))
	if err != nil {
		return nil, err
	}
	var forms []*form
	var walk func(n *html.Node, f *form)
	walk = func(n *html.Node, f *form) {
		if n.Type == html.ElementNode {
			switch n.Data {
			case "form":
				f = &form{action: attr(n, "action"), method: attr(n, "method"), names: map[string]bool{}, values: url.Values{}}
				if f.method == "" {
					f.method = http.MethodGet
				}
				forms = append(forms, f)
			case "input":
				if f != nil && attr(n, "name") != "" {
					switch strings.ToLower(attr(n, "type")) {
					case "submit", "button", "image", "reset":
					case "checkbox", "radio":
						f.names[attr(n, "name")] = true
						if hasAttr(n, "checked") {
							f.values.Add(attr(n, "name"), attrOr(n, "value", "on"))
						}
					default:
						f.names[attr(n, "name")] = true
						f.values.Add(attr(n, "name"), attr(n, "value"))
					}
				}
			}
		}
		for c := n.FirstChild; c != nil; c = c.NextSibling {
			walk(c, f)
		}
	}
	walk(root, nil)
	return forms, nil
}

func attr(n *html.Node, key string) string { return attrOr(n, key, "") }

func attrOr(n *html.Node, key, def string) string {
	for _, a := range n.Attr {
		if a.Key == key {
			return a.Val
		}
	}
	return def
}

func hasAttr(n *html.Node, key string) bool {
	for _, a := range n.Attr {
		if a.Key == key {
			return true
		}
	}
	return false
}

// pageText returns the visible text of an HTML page, whitespace-collapsed
// and cut to a few hundred bytes, for error messages.
func pageText(doc string) string {
	root, err := html.Parse(strings.NewReader(doc))
	if err != nil {
		return ""
	}
	var sb strings.Builder
	var walk func(n *html.Node)
	walk = func(n *html.Node) {
		if n.Type == html.ElementNode && (n.Data == "script" || n.Data == "style" || n.Data == "head") {
			return
		}
		if n.Type == html.TextNode {
			sb.WriteString(n.Data)
			sb.WriteByte(' ')
		}
		for c := n.FirstChild; c != nil; c = c.NextSibling {
			walk(c)
		}
	}
	walk(root)
	s := strings.Join(strings.Fields(sb.String()), " ")
	if len(s) > 300 {
		s = s[:300] + "…"
	}
	return s
}
