// Command etcd is etcd's server, built from the module proxy for the
// integration suite.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
