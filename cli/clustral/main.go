// Command clustral is the single clustral binary: the user commands
// (login, up, down, status, ...) and the server commands
// (clustral coordinator, clustral agent).
//
//	go install github.com/clustral/clustral/cli/clustral@latest
package main

import (
	"os"

	"github.com/clustral/clustral/cli"
)

func main() {
	os.Exit(cli.Main())
}
