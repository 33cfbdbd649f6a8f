package coordclient

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"github.com/clustral/clustral/proto"
)

// OpenRecording reads the recording id from byte off on (GET
// /api/v1/recordings/{id}); with live, also the part shipped so far of a
// session still running. more reports that the recording is not complete
// yet: reading it again from where this answer ends may give more.
func (c *Client) OpenRecording(ctx context.Context, id string, off int64, live bool) (body io.ReadCloser, more bool, err error) {
	q := url.Values{}
	if off > 0 {
		q.Set(proto.RecordingParamOffset, strconv.FormatInt(off, 10))
	}
	if live {
		q.Set(proto.RecordingParamLive, "true")
	}
	path := proto.APIVersion + "/recordings/" + url.PathEscape(id)
	if len(q) > 0 {
		path += "?" + q.Encode()
	}
	req, err := c.newRequest(ctx, http.MethodGet, path, nil)
	if err != nil {
		return nil, false, err
	}
	resp, err := c.send(req)
	if err != nil {
		return nil, false, err
	}
	if resp.StatusCode != http.StatusOK {
		defer resp.Body.Close()
		return nil, false, readError(resp)
	}
	return resp.Body, resp.Header.Get(proto.HeaderRecordingState) == proto.RecordingStateLive, nil
}

// FollowRecording returns the recording id as a stream that follows a
// running session: a read waits (asking the coordinator again every
// interval) until the session recorded more, and the stream ends once
// the whole recording is stored. It fails as OpenRecording does, and
// when ctx ends. Close releases it; it is not safe for concurrent use.
func (c *Client) FollowRecording(ctx context.Context, id string, interval time.Duration) io.ReadCloser {
	return &follower{ctx: ctx, c: c, id: id, interval: interval}
}

type follower struct {
	ctx      context.Context
	c        *Client
	id       string
	interval time.Duration
	off      int64
	cur      io.ReadCloser // the answer being read
	polled   bool          // a poll was made
	done     bool          // the last answer was of the stored recording
}

func (f *follower) Read(p []byte) (int, error) {
	for {
		if f.cur != nil {
			n, err := f.cur.Read(p)
			f.off += int64(n)
			if n > 0 {
				return n, nil
			}
			if err == nil {
				continue
			}
			f.cur.Close()
			f.cur = nil
			if !errors.Is(err, io.EOF) {
				return 0, err
			}
			if f.done {
				return 0, io.EOF
			}
		}
		if f.polled {
			t := time.NewTimer(f.interval)
			select {
			case <-f.ctx.Done():
				t.Stop()
				return 0, f.ctx.Err()
			case <-t.C:
			}
		}
		rc, more, err := f.c.OpenRecording(f.ctx, f.id, f.off, true)
		f.polled = true
		if err != nil {
			return 0, err
		}
		f.cur, f.done = rc, !more
	}
}

func (f *follower) Close() error {
	if f.cur != nil {
		return f.cur.Close()
	}
	return nil
}
