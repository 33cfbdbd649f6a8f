package agent

import "github.com/clustral/clustral/pkg/coordclient"

// CoordinatorError is an error answer of the coordinator to one of the
// agent's requests, such as a refused registration (a wrong or revoked
// join token): the coordinator client's one error type. Problem.Status is
// the HTTP status code. Its Error reads "Title: Detail"; it unwraps to the
// *proto.Problem.
type CoordinatorError = coordclient.Error
