package agent

import (
	"context"
	"errors"
	"io"
	"net/http"
	"sync"
	"time"
)

// clientBody is a request body as the proxy forwards it upstream. It
// remembers why reading it from the client failed, so that a failed
// upstream request is blamed on the client (a body that stopped coming or
// broke off) and not on the apiserver. It is safe for concurrent use: the
// transport reads it on its own goroutine while the handler asks for the
// error.
type clientBody struct {
	io.ReadCloser

	mu     sync.Mutex
	inRead chan struct{} // closed when the Read in progress returns; nil if none
	err    error         // the first read error other than io.EOF
}

func (b *clientBody) Read(p []byte) (int, error) {
	done := make(chan struct{})
	b.mu.Lock()
	b.inRead = done
	b.mu.Unlock()
	n, err := b.ReadCloser.Read(p)
	b.mu.Lock()
	if err != nil && !errors.Is(err, io.EOF) && b.err == nil {
		b.err = err
	}
	b.inRead = nil
	b.mu.Unlock()
	close(done)
	return n, err
}

type clientBodyKey struct{}

// withClientBody wraps r's body, if it has one, in a clientBody that
// clientBodyErr finds from the returned context. r's Body is replaced.
func withClientBody(ctx context.Context, r *http.Request) context.Context {
	if r.Body == nil || r.Body == http.NoBody || r.ContentLength == 0 {
		return ctx
	}
	b := &clientBody{ReadCloser: r.Body}
	r.Body = b
	return context.WithValue(ctx, clientBodyKey{}, b)
}

// maxBodyErrWait bounds how long clientBodyErr waits for a Read in
// progress.
const maxBodyErrWait = time.Second

// clientBodyErr returns why reading the client's body failed, or nil if it
// did not (or there is none).
//
// On HTTP/1.1 a read error from the client cancels the request's context
// inside the failing Read, before that Read returns; so when ctx is done
// and a Read is in progress, clientBodyErr waits for it to return (at most
// maxBodyErrWait) to tell a body that failed from a client that left.
func clientBodyErr(ctx context.Context) error {
	b, _ := ctx.Value(clientBodyKey{}).(*clientBody)
	if b == nil {
		return nil
	}
	b.mu.Lock()
	inRead := b.inRead
	b.mu.Unlock()
	if inRead != nil && ctx.Err() != nil {
		t := time.NewTimer(maxBodyErrWait)
		select {
		case <-inRead:
		case <-t.C:
		}
		t.Stop()
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.err
}
