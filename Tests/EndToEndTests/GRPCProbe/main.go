// grpc-probe: a real grpc-go program (Debian's golang-google-grpc-dev, built offline in GOPATH mode by `make test`),
// for Signpost's end-to-end tests.
//
//	grpc-probe server ADDR...      a gRPC health server on each address; runs until killed
//	grpc-probe client TARGET N     N health checks over one ClientConn dialled to TARGET, one peer address per line
//
// The client sets no service config and no balancer: whatever policy it uses comes from DNS, through grpc-go's
// own dns resolver and its _grpc_config TXT lookup.
package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"strconv"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/peer"
)

func fail(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, format+"\n", args...)
	os.Exit(1)
}

func main() {
	if len(os.Args) < 3 {
		fail("usage: grpc-probe server ADDR... | grpc-probe client TARGET N")
	}
	switch os.Args[1] {
	case "server":
		for _, addr := range os.Args[2:] {
			lis, err := net.Listen("tcp", addr)
			if err != nil {
				fail("listen %s: %v", addr, err)
			}
			s := grpc.NewServer()
			healthpb.RegisterHealthServer(s, health.NewServer())
			go s.Serve(lis)
		}
		fmt.Println("serving")
		select {}
	case "client":
		if len(os.Args) != 4 {
			fail("usage: grpc-probe client TARGET N")
		}
		n, err := strconv.Atoi(os.Args[3])
		if err != nil {
			fail("N: %v", err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		conn, err := grpc.DialContext(ctx, os.Args[2], grpc.WithInsecure(), grpc.WithBlock())
		if err != nil {
			fail("dial %s: %v", os.Args[2], err)
		}
		defer conn.Close()
		client := healthpb.NewHealthClient(conn)
		for i := 0; i < n; i++ {
			var p peer.Peer
			if _, err := client.Check(ctx, &healthpb.HealthCheckRequest{}, grpc.Peer(&p)); err != nil {
				fail("call %d: %v", i, err)
			}
			fmt.Println(p.Addr.String())
			// Calls spread over 300 ms, so that every subchannel round_robin opens is ready for most of them.
			time.Sleep(10 * time.Millisecond)
		}
	default:
		fail("unknown mode %q", os.Args[1])
	}
}
