package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"strings"

	"github.com/clustral/clustral/proto"
)

// CoordinatorError is an error answer of the coordinator to one of the
// agent's requests, such as a refused registration (a wrong or revoked
// join token). Problem.Status is the HTTP status code. Its Error reads
// "Title: Detail"; it unwraps to the *proto.Problem.
type CoordinatorError struct {
	Problem proto.Problem
}

func (e *CoordinatorError) Error() string {
	if e.Problem.Detail != "" {
		return e.Problem.Title + ": " + e.Problem.Detail
	}
	return e.Problem.Title
}

func (e *CoordinatorError) Unwrap() error { return &e.Problem }

// coordClient makes the agent's calls to the coordinator's JSON API with
// one bearer token: the join token to register, the node token after.
type coordClient struct {
	base  string
	token string
	hc    *http.Client
}

// do sends a request with an optional JSON body and decodes a JSON answer
// into out. An error answer is a *CoordinatorError; a coordinator that
// cannot be reached gives an error wrapping the *url.Error.
func (c *coordClient) do(ctx context.Context, method, path string, body, out any) error {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, rd)
	if err != nil {
		return err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return fmt.Errorf("reach coordinator %s: %w", c.base, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode >= 300 || resp.StatusCode == http.StatusAccepted {
		ce := &CoordinatorError{}
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
		if json.Unmarshal(b, &ce.Problem) != nil || ce.Problem.Title == "" {
			ce.Problem.Title = fmt.Sprintf("coordinator answered %s: %s", resp.Status, strings.TrimSpace(string(b)))
		}
		ce.Problem.Status = resp.StatusCode
		return ce
	}
	if out == nil || resp.StatusCode == http.StatusNoContent {
		return nil
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return fmt.Errorf("decode coordinator answer to %s %s: %w", method, path, err)
	}
	return nil
}

// shipAudit returns the spool's Sender: batches go to the coordinator
// with the agent's node token.
func (c *coordClient) shipAudit(ctx context.Context, b proto.AuditBatch) (proto.AuditAck, error) {
	var ack proto.AuditAck
	err := c.do(ctx, "POST", proto.APIVersion+"/audit/events", b, &ack)
	return ack, err
}

// publishEndpoints publishes the agent's UDP endpoints (endpoint
// discovery found a new public one).
func (c *coordClient) publishEndpoints(ctx context.Context, eps []netip.AddrPort) error {
	return c.do(ctx, "PUT", proto.APIVersion+"/nodes/self/endpoints", proto.EndpointsUpdate{Endpoints: eps}, nil)
}
