package proto

import (
	"fmt"
	"time"
)

// ---- Live sessions ----
//
// An agent reports the long-lived requests open through it (watches,
// followed logs, exec, attach, port-forward and proxy upgrades) to the
// coordinator with PUT AgentStatusPath: at once (coalesced) when the set
// changes, and in full every AgentStatusInterval, so a coordinator that
// restarted, or a replica the agent moved to, converges. Each report
// replaces the last. Administrators list them with GET LiveSessionsPath
// and end one with POST LiveSessionsPath/{id}/end; the coordinator then
// names the stream in MapMessage.EndStreams on the agent's map stream
// (at once, or when the stream opens again), and the agent closes it.

// Paths of the live-session calls.
const (
	// AgentStatusPath is where an agent PUTs its AgentStatus (node
	// token).
	AgentStatusPath = APIVersion + "/nodes/self/status"
	// LiveSessionsPath lists the live sessions of every agent (GET,
	// administrators); POST LiveSessionsPath/{id}/end ends one.
	LiveSessionsPath = APIVersion + "/live-sessions"
)

// AgentStatusInterval is how often an agent sends its full status even
// when nothing changed. The coordinator leaves out the live sessions of
// an agent whose last report is older than LiveStaleAfter: it missed
// three reports.
const (
	AgentStatusInterval = 30 * time.Second
	LiveStaleAfter      = 3 * AgentStatusInterval
)

// MaxLiveStreams bounds the streams of one AgentStatus; an agent with more
// reports the oldest ones and sets AgentStatus.Truncated.
const MaxLiveStreams = 1000

// Kinds of a live stream.
const (
	LiveWatch       = "watch"        // a watch (kubectl get -w)
	LiveLogs        = "logs"         // followed logs (kubectl logs -f)
	LiveExec        = "exec"         // kubectl exec
	LiveAttach      = "attach"       // kubectl attach
	LivePortForward = "port-forward" // kubectl port-forward
	LiveProxy       = "proxy"        // an upgrade on a proxy subresource
)

// LiveStream is one long-lived request open through an agent.
type LiveStream struct {
	// ID is the request's correlation id (X-Clustral-Request-Id, the
	// correlation of its audit events): unique, chosen by the agent.
	ID string `json:"id"`
	// Kind is one of LiveWatch, LiveLogs, LiveExec, LiveAttach,
	// LivePortForward, LiveProxy.
	Kind string `json:"kind"`
	// User is the login of the device's owner; Device the device's
	// WireGuard key.
	User   string `json:"user"`
	Device Key    `json:"device"`
	// Namespace, Resource, Name and Subresource say what it touches;
	// Container and Command are those of an exec or attach (from the
	// request's query), Path is the request's path.
	Namespace   string    `json:"namespace,omitempty"`
	Resource    string    `json:"resource,omitempty"`
	Name        string    `json:"name,omitempty"`
	Subresource string    `json:"subresource,omitempty"`
	Container   string    `json:"container,omitempty"`
	Command     []string  `json:"command,omitempty"`
	Path        string    `json:"path"`
	Started     time.Time `json:"started"`
	// Recording is the id of the session's recording, if it is recorded.
	Recording string `json:"recording,omitempty"`

	// Cluster, Agent and AgentHost are set by the coordinator when it
	// lists live sessions: the cluster and node id and host name of the
	// agent that reported it.
	Cluster   string `json:"cluster,omitempty"`
	Agent     string `json:"agent,omitempty"`
	AgentHost string `json:"agent_host,omitempty"`
}

// Target names what s touches in words: "pods default/web-0", "pods in
// default", "pods in every namespace", or the request's path.
func (s *LiveStream) Target() string {
	switch {
	case s.Name != "":
		return s.Resource + " " + s.Namespace + "/" + s.Name
	case s.Resource != "" && s.Namespace != "":
		return s.Resource + " in " + s.Namespace
	case s.Resource != "":
		return s.Resource + " in every namespace"
	}
	return s.Path
}

// Validate checks what a coordinator stores of a reported stream.
func (s *LiveStream) Validate() error {
	switch {
	case s.ID == "" || len(s.ID) > 128:
		return fmt.Errorf("live stream id %q: want 1 to 128 characters", s.ID)
	case s.Kind == "" || len(s.Kind) > 32:
		return fmt.Errorf("live stream %s: kind %q: want one of watch, logs, exec, attach, port-forward, proxy", s.ID, s.Kind)
	case len(s.Path) > 4096 || len(s.Command) > 64:
		return fmt.Errorf("live stream %s: path or command too long", s.ID)
	}
	return nil
}

// PathCounts counts peers by how packets reach them.
type PathCounts struct {
	Direct  int `json:"direct"`
	Relayed int `json:"relayed"`
}

// AgentStatus is the body of PUT AgentStatusPath: what the agent is and
// has open now. Each report replaces the last.
type AgentStatus struct {
	// Version is the agent's build (pkg/version).
	Version string `json:"version"`
	// Ready is the agent's /readyz: it has its map and is not draining.
	Ready bool `json:"ready"`
	// Paths counts the peers the agent exchanged packets with lately, by
	// path.
	Paths PathCounts `json:"paths"`
	// Streams are the long-lived requests open now, oldest first.
	Streams   []LiveStream `json:"streams"`
	Truncated bool         `json:"truncated,omitempty"`
}

// Validate checks a reported status: at most MaxLiveStreams streams, a
// version of at most 128 bytes, and every stream valid.
func (st *AgentStatus) Validate() error {
	if len(st.Streams) > MaxLiveStreams {
		return fmt.Errorf("%d live streams: report at most %d and set truncated", len(st.Streams), MaxLiveStreams)
	}
	if len(st.Version) > 128 {
		return fmt.Errorf("version of %d bytes: send the agent's version, at most 128", len(st.Version))
	}
	if st.Paths.Direct < 0 || st.Paths.Relayed < 0 {
		return fmt.Errorf("negative path counts %+v", st.Paths)
	}
	for i := range st.Streams {
		if err := st.Streams[i].Validate(); err != nil {
			return err
		}
	}
	return nil
}

// LiveSessions is the answer of GET LiveSessionsPath.
type LiveSessions struct {
	Streams []LiveStream `json:"streams"`
	// Stale names the agents (node ids) whose last report is older than
	// LiveStaleAfter: their streams are left out.
	Stale []string `json:"stale,omitempty"`
}

// EndLiveSession answers POST LiveSessionsPath/{id}/end: the stream and
// whether the agent was told at once (its map stream is open on the
// coordinator that answered). When it was not, the replica holding the
// agent's map stream tells it, or the coordinator does when the stream
// opens again.
type EndLiveSession struct {
	Stream LiveStream `json:"stream"`
	Sent   bool       `json:"sent"`
}
