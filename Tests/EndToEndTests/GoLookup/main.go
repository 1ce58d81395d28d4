// lookup: asks Go's own resolver (not cgo's getaddrinfo) for NAME COUNT times and prints the first address of
// each answer, one per line, as an application calling net.LookupHost sees it.
package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"strconv"
	"time"
)

func main() {
	name := os.Args[1]
	count, _ := strconv.Atoi(os.Args[2])
	resolver := &net.Resolver{PreferGo: true}
	for i := 0; i < count; i++ {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		addrs, err := resolver.LookupHost(ctx, name)
		cancel()
		if err != nil || len(addrs) == 0 {
			fmt.Println("error", err)
			continue
		}
		fmt.Println(addrs[0])
	}
}
