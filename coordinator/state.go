package coordinator

import (
	"cmp"
	"net/netip"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/clustral/clustral/proto"
)

// state is the coordinator's in-memory model with the indexes the map
// computations need. It is guarded by Server.mu.
//
// Its index* and unindex* methods change the maps and indexes only: no
// node is told. The Server's *AndSync* methods (addAssignmentAndSyncLocked,
// removeNodeAndSyncLocked, ...) index or unindex and then push the map
// updates the change causes; nodeChanged, syncAssignment and
// userChangedLocked push updates for a change already indexed. Loading
// the store uses index* alone, since no stream is open yet.
type state struct {
	users        map[string]*user
	usersByLogin map[string]*user // by loginKey
	usersBySub   map[string]*user
	groupMembers map[string]map[string]*user // OIDC group → users

	sessions map[string]*session // by id hash

	nodes           map[string]*node
	nodesByKey      map[proto.Key]*node
	nodesByToken    map[string]*node
	devicesByUser   map[string]map[string]*node // user id → their devices
	agentsByCluster map[string]map[string]*node // cluster id → its agents
	online          map[string]int              // node id → open map streams
	endpoints       map[string][]netip.AddrPort // node id → published endpoints

	// gone holds the agents that are not in their users' devices' maps:
	// registered whose map stream has not opened yet, or whose stream has
	// been closed for AgentGrace (Server.agentsGone).
	gone map[string]bool

	clusters        map[string]*cluster
	clustersByName  map[string]*cluster
	clustersByToken map[string]*cluster

	roles       map[string]*role
	rolesByName map[string]*role

	assignments          map[string]*assignment
	selectorAssignments  map[string]*assignment // by id, those with a cluster selector
	assignmentsByUser    map[string]map[string]*assignment
	assignmentsByGroup   map[string]map[string]*assignment
	assignmentsByCluster map[string]map[string]*assignment
	assignmentsByRole    map[string]map[string]*assignment

	requests map[string]*accessRequest

	// registering holds the keys of the registrations being written,
	// with their user (for a device), and registeringByUser counts them
	// by user: claimed before the write, which runs without the lock
	// (registerNode).
	registering       map[proto.Key]string
	registeringByUser map[string]int

	// ipam indexes the overlay addresses in use: those of the nodes, and
	// any other the store holds. Set before the nodes are loaded.
	ipam *ipam
}

func (s *state) init() {
	s.users = map[string]*user{}
	s.usersByLogin = map[string]*user{}
	s.usersBySub = map[string]*user{}
	s.groupMembers = map[string]map[string]*user{}
	s.sessions = map[string]*session{}
	s.nodes = map[string]*node{}
	s.nodesByKey = map[proto.Key]*node{}
	s.registering = map[proto.Key]string{}
	s.registeringByUser = map[string]int{}
	s.nodesByToken = map[string]*node{}
	s.devicesByUser = map[string]map[string]*node{}
	s.agentsByCluster = map[string]map[string]*node{}
	s.online = map[string]int{}
	s.gone = map[string]bool{}
	s.endpoints = map[string][]netip.AddrPort{}
	s.clusters = map[string]*cluster{}
	s.clustersByName = map[string]*cluster{}
	s.clustersByToken = map[string]*cluster{}
	s.roles = map[string]*role{}
	s.rolesByName = map[string]*role{}
	s.assignments = map[string]*assignment{}
	s.selectorAssignments = map[string]*assignment{}
	s.requests = map[string]*accessRequest{}
	s.assignmentsByUser = map[string]map[string]*assignment{}
	s.assignmentsByGroup = map[string]map[string]*assignment{}
	s.assignmentsByCluster = map[string]map[string]*assignment{}
	s.assignmentsByRole = map[string]map[string]*assignment{}
}

func addTo[V any](m map[string]map[string]V, k, id string, v V) {
	if k == "" {
		return
	}
	inner := m[k]
	if inner == nil {
		inner = map[string]V{}
		m[k] = inner
	}
	inner[id] = v
}

func delFrom[V any](m map[string]map[string]V, k, id string) {
	if inner := m[k]; inner != nil {
		delete(inner, id)
		if len(inner) == 0 {
			delete(m, k)
		}
	}
}

// indexUser adds u, or replaces the user with u's id, in the indexes.
func (s *state) indexUser(u *user) {
	if old := s.users[u.ID]; old != nil {
		for _, g := range old.Groups {
			delFrom(s.groupMembers, g, u.ID)
		}
		if s.usersByLogin[loginKey(old.Login)] == old {
			delete(s.usersByLogin, loginKey(old.Login))
		}
	}
	s.users[u.ID] = u
	s.usersByLogin[loginKey(u.Login)] = u
	s.usersBySub[u.Subject] = u
	for _, g := range u.Groups {
		addTo(s.groupMembers, g, u.ID, u)
	}
}

// loginKey is the key of usersByLogin: logins are unique regardless of
// case, as the administrator list matches them.
func loginKey(login string) string { return strings.ToLower(login) }

// sharedLogins gives each login that several stored users hold (stores
// written before logins were unique) to the user who had it first, the
// oldest, and returns the others by login.
func (s *state) sharedLogins() map[string][]*user {
	byKey := map[string][]*user{}
	for _, u := range s.users {
		byKey[loginKey(u.Login)] = append(byKey[loginKey(u.Login)], u)
	}
	out := map[string][]*user{}
	for k, us := range byKey {
		if len(us) < 2 {
			continue
		}
		slices.SortFunc(us, func(a, b *user) int { return cmp.Or(a.Created.Compare(b.Created), strings.Compare(a.ID, b.ID)) })
		s.usersByLogin[k] = us[0]
		out[us[0].Login] = us[1:]
	}
	return out
}

// userByLogin returns the user whose login is login, in any case.
func (s *state) userByLogin(login string) *user { return s.usersByLogin[loginKey(login)] }

// indexNode adds n to the indexes and marks its addresses in use.
func (s *state) indexNode(n *node) {
	s.nodes[n.ID] = n
	s.nodesByKey[n.Key] = n
	s.nodesByToken[n.TokenHash] = n
	for _, a := range n.Addresses {
		s.ipam.use(a.Addr())
	}
	if len(n.Endpoints) > 0 {
		s.endpoints[n.ID] = n.Endpoints
	}
	switch n.Kind {
	case proto.KindDevice:
		addTo(s.devicesByUser, n.UserID, n.ID, n)
	case proto.KindAgent:
		addTo(s.agentsByCluster, n.ClusterID, n.ID, n)
	}
}

// unindexNode removes n from the indexes and frees its addresses.
func (s *state) unindexNode(n *node) {
	delete(s.nodes, n.ID)
	if s.nodesByKey[n.Key] == n {
		delete(s.nodesByKey, n.Key)
	}
	delete(s.nodesByToken, n.TokenHash)
	delete(s.endpoints, n.ID)
	delete(s.gone, n.ID)
	for _, a := range n.Addresses {
		s.ipam.free(a.Addr())
	}
	delFrom(s.devicesByUser, n.UserID, n.ID)
	delFrom(s.agentsByCluster, n.ClusterID, n.ID)
}

// indexCluster adds c, or replaces the cluster with c's id, in the
// indexes.
func (s *state) indexCluster(c *cluster) {
	if old := s.clusters[c.ID]; old != nil {
		delete(s.clustersByToken, old.JoinTokenHash)
	}
	s.clusters[c.ID] = c
	s.clustersByName[c.Name] = c
	if c.JoinTokenHash != "" {
		s.clustersByToken[c.JoinTokenHash] = c
	}
}

// unindexCluster removes c from the indexes.
func (s *state) unindexCluster(c *cluster) {
	delete(s.clusters, c.ID)
	delete(s.clustersByName, c.Name)
	delete(s.clustersByToken, c.JoinTokenHash)
}

// indexRole adds r, or replaces the role with r's id, in the indexes.
func (s *state) indexRole(r *role) {
	if old := s.roles[r.ID]; old != nil {
		delete(s.rolesByName, old.Name)
	}
	s.roles[r.ID] = r
	s.rolesByName[r.Name] = r
}

// unindexRole removes r from the indexes.
func (s *state) unindexRole(r *role) {
	delete(s.roles, r.ID)
	delete(s.rolesByName, r.Name)
}

// indexAssignment adds a to the indexes.
func (s *state) indexAssignment(a *assignment) {
	s.assignments[a.ID] = a
	if a.ClusterID == "" {
		s.selectorAssignments[a.ID] = a
	}
	addTo(s.assignmentsByUser, a.UserID, a.ID, a)
	addTo(s.assignmentsByGroup, a.Group, a.ID, a)
	addTo(s.assignmentsByCluster, a.ClusterID, a.ID, a)
	addTo(s.assignmentsByRole, a.RoleID, a.ID, a)
}

// unindexAssignment removes a from the indexes.
func (s *state) unindexAssignment(a *assignment) {
	delete(s.assignments, a.ID)
	delete(s.selectorAssignments, a.ID)
	delFrom(s.assignmentsByUser, a.UserID, a.ID)
	delFrom(s.assignmentsByGroup, a.Group, a.ID)
	delFrom(s.assignmentsByCluster, a.ClusterID, a.ID)
	delFrom(s.assignmentsByRole, a.RoleID, a.ID)
}

// assignmentsOf returns the assignments that name u directly or through one
// of u's groups.
func (s *state) assignmentsOf(u *user) []*assignment {
	var out []*assignment
	for _, a := range s.assignmentsByUser[u.ID] {
		out = append(out, a)
	}
	for _, g := range u.Groups {
		for _, a := range s.assignmentsByGroup[g] {
			out = append(out, a)
		}
	}
	return out
}

// rolesOn returns the roles that apply to u on cluster c at now, sorted by
// role name, one entry per role (the latest expiry wins).
func (s *state) rolesOn(u *user, clusterID string, now time.Time) []proto.RoleGrant {
	if u == nil || u.Disabled {
		return nil
	}
	byRole := map[string]*proto.RoleGrant{}
	c := s.clusters[clusterID]
	for _, a := range s.assignmentsOf(u) {
		if !a.appliesTo(c) || !a.activeAt(now) {
			continue
		}
		r := s.roles[a.RoleID]
		if r == nil {
			continue
		}
		src := "user"
		switch {
		case a.RequestID != "":
			src = "grant:" + a.RequestID
		case a.Group != "":
			src = "group:" + a.Group
		}
		g, ok := byRole[r.ID]
		if !ok {
			g = &proto.RoleGrant{Role: r.Name, Groups: slices.Clone(r.Groups), KubeUser: r.KubeUser, Expires: a.Expires, Source: src, Restrictions: r.Restrictions,
				Recording: r.Recording, RecordStdin: r.RecordStdin}
			byRole[r.ID] = g
			continue
		}
		// Keep the longest-lived source.
		if g.Expires != nil && (a.Expires == nil || a.Expires.After(*g.Expires)) {
			g.Expires, g.Source = a.Expires, src
		}
	}
	out := make([]proto.RoleGrant, 0, len(byRole))
	for _, g := range byRole {
		out = append(out, *g)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Role < out[j].Role })
	return out
}

// clustersOf returns the ids of the clusters u may reach at now.
func (s *state) clustersOf(u *user, now time.Time) map[string]bool {
	out := map[string]bool{}
	if u == nil || u.Disabled {
		return out
	}
	for _, a := range s.assignmentsOf(u) {
		if a.activeAt(now) && s.roles[a.RoleID] != nil {
			for _, cid := range s.clustersOfAssignment(a) {
				out[cid] = true
			}
		}
	}
	return out
}

// clustersOfAssignment returns the ids of the clusters a names.
func (s *state) clustersOfAssignment(a *assignment) []string {
	if a.ClusterID != "" {
		if s.clusters[a.ClusterID] == nil {
			return nil
		}
		return []string{a.ClusterID}
	}
	var out []string
	for id, c := range s.clusters {
		if a.appliesTo(c) {
			out = append(out, id)
		}
	}
	return out
}

// possibleClusters returns every cluster any assignment of u names,
// whatever its state: the agents that might hold u's devices.
func (s *state) possibleClusters(u *user) map[string]bool {
	out := map[string]bool{}
	if u == nil {
		return out
	}
	for _, a := range s.assignmentsOf(u) {
		for _, cid := range s.clustersOfAssignment(a) {
			out[cid] = true
		}
	}
	return out
}

// usersOn returns the users that may reach cluster c at now.
func (s *state) usersOn(clusterID string, now time.Time) map[string]*user {
	out := map[string]*user{}
	c := s.clusters[clusterID]
	asgs := make([]*assignment, 0, len(s.assignmentsByCluster[clusterID]))
	for _, a := range s.assignmentsByCluster[clusterID] {
		asgs = append(asgs, a)
	}
	for _, a := range s.selectorAssignments {
		if a.appliesTo(c) {
			asgs = append(asgs, a)
		}
	}
	for _, a := range asgs {
		if !a.activeAt(now) || s.roles[a.RoleID] == nil {
			continue
		}
		if a.UserID != "" {
			if u := s.users[a.UserID]; u != nil && !u.Disabled {
				out[u.ID] = u
			}
		}
		for id, u := range s.groupMembers[a.Group] {
			if !u.Disabled {
				out[id] = u
			}
		}
	}
	return out
}

// peer builds the view of n that other nodes get. For a device seen by an
// agent of cluster viewerCluster, it carries the identity with the roles on
// that cluster.
func (s *state) peer(n *node, viewerCluster string, now time.Time) proto.Peer {
	p := proto.Peer{
		Key:       n.Key,
		NodeID:    n.ID,
		Kind:      n.Kind,
		Hostname:  n.Hostname,
		Addresses: slices.Clone(n.Addresses),
		Endpoints: slices.Clone(s.endpoints[n.ID]),
		Online:    s.online[n.ID] > 0,
	}
	switch n.Kind {
	case proto.KindAgent:
		if c := s.clusters[n.ClusterID]; c != nil {
			p.Cluster = c.Name
		}
	case proto.KindDevice:
		if viewerCluster != "" {
			if u := s.users[n.UserID]; u != nil {
				p.Identity = &proto.Identity{
					UserID:  u.ID,
					Login:   u.Login,
					Email:   u.Email,
					Groups:  slices.Clone(u.Groups),
					Roles:   s.rolesOn(u, viewerCluster, now),
					Expires: n.Expires,
				}
			}
		}
	}
	return p
}

// snapshot builds the full map for n.
func (s *state) snapshot(n *node, meshDomain string, caPEM []byte, now time.Time) proto.MapMessage {
	self := s.peer(n, "", now)
	self.Online = true
	msg := proto.MapMessage{
		Snapshot:   true,
		Self:       &self,
		MeshDomain: meshDomain,
		CABundle:   string(caPEM),
		Peers:      []proto.Peer{},
	}
	switch n.Kind {
	case proto.KindDevice:
		u := s.users[n.UserID]
		for cid := range s.clustersOf(u, now) {
			for _, a := range s.agentsByCluster[cid] {
				if !s.gone[a.ID] {
					msg.Peers = append(msg.Peers, s.peer(a, "", now))
				}
			}
		}
	case proto.KindAgent:
		for _, u := range s.usersOn(n.ClusterID, now) {
			for _, d := range s.devicesByUser[u.ID] {
				if d.Expires.IsZero() || now.Before(d.Expires) {
					msg.Peers = append(msg.Peers, s.peer(d, n.ClusterID, now))
				}
			}
		}
	}
	sort.Slice(msg.Peers, func(i, j int) bool { return msg.Peers[i].NodeID < msg.Peers[j].NodeID })
	return msg
}
