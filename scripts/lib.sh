# Shared shell functions for scripts/dev, scripts/test and scripts/bench. Source it.
#
# Postgres and Redis always run as unprivileged users (Postgres refuses root): the
# `postgres` and `redis` accounts that Debian's packages create when we are root,
# ourselves otherwise. They listen on 127.0.0.1 only.

PARLEY_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PG_BIN=${PARLEY_PG_BIN:-/usr/lib/postgresql/15/bin}

# ccache: key on paths relative to the checkout, so a fresh clone elsewhere (as CI
# makes) still hits the cache filled by earlier builds.
export CCACHE_BASEDIR="$PARLEY_ROOT"
export CCACHE_NOHASHDIR=1

log() { echo "[$(date +%H:%M:%S)] $*" >&2; }
die() { echo "error: $*" >&2; exit 1; }

# run_as USER CMD... — runs CMD as USER when we are root, as ourselves otherwise.
run_as() {
  local user=$1; shift
  if [[ $(id -u) -eq 0 ]]; then runuser -u "$user" -- "$@"; else "$@"; fi
}

# own_dir USER DIR — creates DIR and hands it to USER.
own_dir() {
  mkdir -p "$2"
  if [[ $(id -u) -eq 0 ]]; then chown "$1" "$2"; fi
}

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# free_port — prints a TCP port on 127.0.0.1 that nothing listens on right now. It is
# chosen below the kernel's ephemeral range: a port in that range can become the local
# port of some outgoing connection between this choice and the server's bind (a
# redis-server once failed to start so, under load).
free_port() {
  local port low
  low=$(cut -f1 /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || echo 32768)
  (( low > 11000 )) || low=32768
  for _ in $(seq 1 200); do
    port=$((10000 + RANDOM % (low - 10000)))
    port_in_use "$port" || { echo "$port"; return 0; }
  done
  die "no free port found"
}

# build_dir — the build tree for this configuration.
build_dir() {
  if [[ "${PARLEY_SANITIZE:-0}" == "1" ]]; then echo "$PARLEY_ROOT/build-asan"; else echo "$PARLEY_ROOT/build"; fi
}

# ensure_built — installs missing packages, configures once, builds incrementally.
ensure_built() {
  "$PARLEY_ROOT/scripts/setup"
  local dir; dir=$(build_dir)
  if [[ ! -f "$dir/build.ninja" ]]; then
    local sanitize=OFF
    [[ "${PARLEY_SANITIZE:-0}" == "1" ]] && sanitize=ON
    cmake -S "$PARLEY_ROOT" -B "$dir" -G Ninja -DPARLEY_SANITIZE="$sanitize" >/dev/null
  fi
  # Two cores: keep the link steps from starving each other of memory and CPU.
  cmake --build "$dir" -- -j "${PARLEY_BUILD_JOBS:-$(nproc)}"
}

# start_postgres DIR PORT [durable] — initialises (once) and starts a cluster in DIR.
# Without "durable" fsync is off: fine for throwaway test clusters, which only ever
# see process crashes, never a machine crash.
start_postgres() {
  local dir=$1 port=$2 durable=${3:-}
  own_dir postgres "$dir"
  if [[ ! -f "$dir/data/PG_VERSION" ]]; then
    run_as postgres "$PG_BIN/initdb" -D "$dir/data" -U postgres --auth=trust -E UTF8 \
      --locale=C.UTF-8 --no-sync >"$dir/initdb.log" 2>&1 || { cat "$dir/initdb.log" >&2; die "initdb failed"; }
  fi
  local opts="-c listen_addresses=127.0.0.1 -p $port -k $dir -c max_connections=200"
  [[ "$durable" == "durable" ]] || opts+=" -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
  run_as postgres "$PG_BIN/pg_ctl" -D "$dir/data" -l "$dir/postgres.log" -o "$opts" -w -t 60 start >/dev/null \
    || { tail -20 "$dir/postgres.log" >&2; die "postgres did not start"; }
}

stop_postgres() {
  local dir=$1
  [[ -f "$dir/data/postmaster.pid" ]] || return 0
  run_as postgres "$PG_BIN/pg_ctl" -D "$dir/data" -m fast -w -t 30 stop >/dev/null 2>&1 || true
}

# start_redis DIR PORT [durable] — starts redis-server with its files in DIR.
start_redis() {
  local dir=$1 port=$2 durable=${3:-}
  own_dir redis "$dir"
  local persistence=(--save "" --appendonly no)
  [[ "$durable" == "durable" ]] && persistence=(--save "" --appendonly yes)
  run_as redis redis-server --bind 127.0.0.1 --port "$port" --dir "$dir" --daemonize yes \
    --pidfile "$dir/redis.pid" --logfile "$dir/redis.log" "${persistence[@]}" >/dev/null
  for _ in $(seq 1 100); do
    [[ "$(redis-cli -p "$port" ping 2>/dev/null)" == "PONG" ]] && return 0
    sleep 0.1
  done
  tail -20 "$dir/redis.log" >&2
  die "redis did not start"
}

stop_redis() {
  local dir=$1 port=$2
  redis-cli -p "$port" shutdown nosave >/dev/null 2>&1 || true
  if [[ -f "$dir/redis.pid" ]]; then
    local pid; pid=$(cat "$dir/redis.pid")
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  fi
}

# start_redis_cluster DIR PORT:BUSPORT... — one cluster-enabled redis-server per
# PORT:BUSPORT (client port and cluster bus port) in DIR/PORT, joined into one Redis
# Cluster with a replica for every primary (six nodes: three primaries, three replicas).
# A node timeout of one second makes a replica take over a killed primary within
# seconds. Returns once every node reports cluster_state:ok and every replica's link
# to its primary is up.
start_redis_cluster() {
  local dir=$1; shift
  local spec port bus nodes=() ports=()
  own_dir redis "$dir"
  for spec in "$@"; do
    port=${spec%%:*} bus=${spec##*:}
    own_dir redis "$dir/$port"
    run_as redis redis-server --bind 127.0.0.1 --port "$port" --dir "$dir/$port" --daemonize yes \
      --pidfile "$dir/$port/redis.pid" --logfile "$dir/$port/redis.log" --save "" --appendonly no \
      --cluster-enabled yes --cluster-port "$bus" --cluster-config-file "$dir/$port/nodes.conf" \
      --cluster-node-timeout 1000 >/dev/null
    nodes+=("127.0.0.1:$port") ports+=("$port")
  done
  for port in "${ports[@]}"; do
    for _ in $(seq 1 100); do
      [[ "$(redis-cli -p "$port" ping 2>/dev/null)" == "PONG" ]] && break
      sleep 0.1
    done
  done
  redis-cli --cluster create "${nodes[@]}" --cluster-replicas 1 --cluster-yes >"$dir/create.log" 2>&1 \
    || { cat "$dir/create.log" >&2; die "redis-cli --cluster create failed"; }
  wait_redis_cluster "${ports[@]}"
}

# wait_redis_cluster PORT... — waits (30 s at most) until every node answers
# cluster_state:ok and every replica among them has its primary link up.
wait_redis_cluster() {
  local port
  for port in "$@"; do
    for _ in $(seq 1 300); do
      if redis-cli -p "$port" cluster info 2>/dev/null | grep -q '^cluster_state:ok' &&
         ! redis-cli -p "$port" info replication 2>/dev/null | grep -q '^master_link_status:down'; then
        continue 2
      fi
      sleep 0.1
    done
    die "redis cluster node $port not ready"
  done
}

# stop_redis_cluster DIR PORT... — stops every node start_redis_cluster started.
stop_redis_cluster() {
  local dir=$1; shift
  local port
  for port in "$@"; do stop_redis "$dir/$port" "$port"; done
}

# stop_pid PIDFILE — SIGTERM, wait up to 15 s, then SIGKILL.
stop_pid() {
  local pidfile=$1
  [[ -f "$pidfile" ]] || return 0
  local pid; pid=$(cat "$pidfile")
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null
  fi
  rm -f "$pidfile"
}
