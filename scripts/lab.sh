# Sourced by scripts/ab, instr, paired, pgo and split: the
# certificates, the policy a README reader would write, a gateway config and
# the payload-only bench backend, all under $W (the caller's work directory;
# C=$W/certs), and helpers to wait for sockets and read CPU time.

# Certificates for the gateway, the backend and the bench client (alice).
lab_certs() {
  C=$W/certs
  local bin=target/release/ipcgate
  $bin ca init --dir "$C" >/dev/null
  $bin cert issue --ca-dir "$C" --out "$C/gateway" --dns localhost --server >/dev/null
  $bin cert issue --ca-dir "$C" --out "$C/backend" --dns localhost --server >/dev/null
  $bin cert issue --ca-dir "$C" --out "$C/alice" --spiffe spiffe://bench.test/alice --cn alice --client >/dev/null
  cat > "$W/policy.json" <<'JSON'
{ "name": "bench",
  "deny_rules": [{ "name": "no-client-stream", "request": { "paths": ["/demo.v1.Echo/ClientStream"] } }],
  "allow_rules": [{ "name": "alice-echo", "source": { "principals": ["spiffe://bench.test/alice"] },
    "request": { "paths": ["/demo.v1.Echo/Unary", "/demo.v1.Echo/ServerStream", "/demo.v1.Echo/Bidi"] } }] }
JSON
}

# lab_config SOCKET OUT: a gateway config listening on SOCKET, routing Echo to
# $W/echo.sock under $W/policy.json.
lab_config() {
  printf '[listen]\nuds = "%s"\n[tls]\ncert = "%s"\nkey = "%s"\nclient_ca = "%s"\n[policy]\nfile = "%s"\n[[route]]\nservice = "demo.v1.Echo"\nbackend = "unix:%s"\n' \
    "$1" "$C/gateway.pem" "$C/gateway.key" "$C/ca.pem" "$W/policy.json" "$W/echo.sock" > "$2"
}

# lab_backend [ARGS...]: the bench backend on $W/echo.sock (h2c), replies
# carrying the payload alone; its pid is added to PIDS.
lab_backend() {
  target/release/examples/backend --uds "$W/echo.sock" "$@" --cert "$C/backend.pem" --key "$C/backend.key" \
    --client-ca "$C/ca.pem" --payload-only 2>"$W/backend.log" &
  PIDS+=($!)
}

# lab_wait NAME...: waits up to 5 s for each socket $W/NAME; one that does
# not appear stops the script, with the logs under $W.
lab_wait() {
  local s
  for s in "$@"; do
    for _ in $(seq 100); do [ -S "$W/$s" ] && break; sleep 0.05; done
    [ -S "$W/$s" ] || { echo "$0: $s did not appear" >&2; cat "$W"/*.log >&2 2>/dev/null || true; exit 1; }
  done
}

# lab_ticks PID: the process's CPU time so far (user + system), in clock ticks.
lab_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# lab_idle: the machine's idle time so far, summed over its CPUs, in
# hundredths of a second (/proc/uptime's second field).
lab_idle() { awk '{printf "%d", $2 * 100}' /proc/uptime; }

# lab_switches: context switches on the machine so far (/proc/stat).
lab_switches() { awk '/^ctxt/{print $2}' /proc/stat; }

# lab_gateways A_BIN B_BIN: gateways a and b on $W/a.sock and $W/b.sock, each
# with its own config; A_ENV / B_ENV (extra environment), A_PREFIX / B_PREFIX
# (a command to run it under, e.g. "nice -n 5") and A_TOML / B_TOML (config
# lines appended) change one side. Their pids go to GW[a], GW[b] and PIDS.
lab_gateways() {
  declare -gA GW
  local x bin xenv xpre xtoml
  for x in a b; do
    lab_config "$W/$x.sock" "$W/$x.toml"
    if [ $x = a ]; then bin=$1 xenv=${A_ENV:-} xpre=${A_PREFIX:-} xtoml=${A_TOML:-}
    else bin=$2 xenv=${B_ENV:-} xpre=${B_PREFIX:-} xtoml=${B_TOML:-}; fi
    [ -z "$xtoml" ] || printf '%b\n' "$xtoml" >>"$W/$x.toml"
    # shellcheck disable=SC2086 # the prefix and environment are word lists
    env $xenv RUST_LOG=warn $xpre "$bin" serve --config "$W/$x.toml" 2>"$W/$x.log" &
    GW[$x]=$!
    PIDS+=($!)
  done
}
