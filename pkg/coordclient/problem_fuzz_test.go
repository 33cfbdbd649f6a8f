package coordclient

import (
	"bytes"
	"io"
	"net/http"
	"testing"
)

// FuzzReadError: any error answer, whatever its body, becomes an *Error
// with the answer's status and a title to show.
func FuzzReadError(f *testing.F) {
	f.Add(403, []byte(`{"title":"Forbidden","status":403,"detail":"not an admin","code":"FORBIDDEN","hint":"ask one"}`))
	f.Add(502, []byte("bad gateway\n"))
	f.Add(401, []byte(`{"title":"","detail":"no title"}`))
	f.Add(500, []byte(`{"title":"x","status":"nope"}`))
	f.Add(404, []byte{})
	f.Fuzz(func(t *testing.T, status int, body []byte) {
		if status < 100 || status > 999 {
			return
		}
		resp := &http.Response{StatusCode: status, Status: http.StatusText(status), Body: io.NopCloser(bytes.NewReader(body))}
		e := readError(resp)
		if e.Status != status || e.Title == "" || e.Error() == "" {
			t.Fatalf("readError(%d, %q) = %+v", status, body, e.Problem)
		}
	})
}
