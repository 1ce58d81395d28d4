#!/usr/bin/env python3
"""Registers services the way the Go frameworks' Consul registrars do, through Debian's python3-consul (a Consul
client nobody on this project wrote), against the stand-in.

  registrar.py PORT register NAME ID ADDRESS PORT TTL [DEREGISTER_AFTER] [TAG...]
  registrar.py PORT pass|warn|fail CHECK_ID
  registrar.py PORT deregister ID
"""
import sys

import consul


def main():
    port, action, args = int(sys.argv[1]), sys.argv[2], sys.argv[3:]
    c = consul.Consul(host="127.0.0.1", port=port)
    if action == "register":
        name, service_id, address, service_port, ttl = args[:5]
        check = consul.Check.ttl(ttl)
        if len(args) > 5 and args[5] != "-":
            check["DeregisterCriticalServiceAfter"] = args[5]
        ok = c.agent.service.register(name, service_id=service_id, address=address, port=int(service_port),
                                      tags=args[6:] or None, check=check)
    elif action in ("pass", "warn", "fail"):
        # python3-consul 1.1's ttl_pass/ttl_warn/ttl_fail (and service.deregister) send GET, which Consul has
        # refused (405) since 1.0 made these endpoints PUT-only; registrars use PUT, so this does too, through the
        # library's own HTTP client.
        ok = c.http.put(consul.base.CB.bool(), "/v1/agent/check/%s/%s" % (action, args[0]))
    elif action == "deregister":
        ok = c.http.put(consul.base.CB.bool(), "/v1/agent/service/deregister/%s" % args[0])
    else:
        sys.exit(f"unknown action {action}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
