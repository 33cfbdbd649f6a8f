package proto

// MapEndpointsParam is the query parameter of GET /api/v1/map with which a
// node publishes the UDP endpoints it can be reached on: a comma-separated
// list of ip:port, e.g. "?endpoints=192.0.2.10:41641,[2001:db8::10]:41641".
// The coordinator passes them on to the node's peers as Peer.Endpoints.
const MapEndpointsParam = "endpoints"
