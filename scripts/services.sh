#!/usr/bin/env bash
# scripts/services.sh makes PostgreSQL and Redis available for lazymigrate's
# tests and prints, as its only stdout, the shell lines that point at them:
#
#   eval "$(scripts/services.sh)"    # sets LM_PG_URL, LM_REDIS_ADDR and
#                                    # LM_REDIS_CLUSTER_ADDRS
#
# It is idempotent: when all servers already answer it only prints. Otherwise
# it starts (and if need be installs, from Debian's packages) a local
# PostgreSQL cluster, a local Redis and a local 3-master Redis Cluster on
# 127.0.0.1:7101-7103 (data in $TMPDIR/lazymigrate-redis-cluster). Progress
# goes to stderr.
#
# It also makes Chromium available (Debian's chromium package) for the
# status page's browser test, and prints LM_CHROMIUM; LM_SKIP_CHROMIUM=1
# skips that, for the demo.
#
# Inputs (all optional):
#   LM_PG_URL               a Postgres admin URL to use if it answers
#   LM_REDIS_ADDR           a Redis host:port or redis:// URL to use if it answers
#   LM_REDIS_CLUSTER_ADDRS  comma-separated host:port seeds of a Redis Cluster
#                           to use if every one reports cluster_state:ok
set -euo pipefail

readonly DEFAULT_PG_URL='postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable'
readonly DEFAULT_REDIS_HOST=127.0.0.1
readonly DEFAULT_REDIS_PORT=6379
readonly WAIT_SECONDS=30
readonly CLUSTER_HOST=127.0.0.1
readonly CLUSTER_PORTS=(7101 7102 7103)
readonly CLUSTER_DIR=${TMPDIR:-/tmp}/lazymigrate-redis-cluster
# A failed master with slots is readmitted 2 node timeouts after it was marked
# failed; 5 s (not Redis's 15 s) brings a restarted node back within
# WAIT_SECONDS.
readonly CLUSTER_NODE_TIMEOUT_MS=5000

log() { printf 'services: %s\n' "$*" >&2; }
die() {
	printf 'services: error: %s\n' "$*" >&2
	exit 1
}

# as_root runs a command as root: directly when we are root, else with sudo.
as_root() {
	if [[ $(id -u) -eq 0 ]]; then
		"$@"
	elif command -v sudo >/dev/null 2>&1; then
		sudo "$@"
	else
		die "need root to run '$*' (not root and no sudo)"
	fi
}

apt_updated=0
apt_install() {
	command -v apt-get >/dev/null 2>&1 || die "cannot install $* here: apt-get not found (install it yourself)"
	if [[ $apt_updated -eq 0 ]]; then
		log "apt-get update"
		as_root apt-get update >&2 || die "apt-get update failed"
		apt_updated=1
	fi
	log "installing $* from Debian's packages"
	as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y "$@" >&2 ||
		die "apt-get install $* failed"
}

# wait_until polls a command until it succeeds or the deadline passes.
wait_until() {
	local what=$1
	shift
	local deadline=$((SECONDS + WAIT_SECONDS))
	until "$@" >/dev/null 2>&1; do
		if ((SECONDS >= deadline)); then
			return 1
		fi
		sleep 0.2
	done
	log "$what is ready"
}

# shq quotes a value for the shell, in single quotes.
shq() { printf "'%s'" "${1//\'/\'\\\'\'}"; }

# redact hides a password in a URL, for messages.
redact() { sed -E 's#(://[^:/@]*):[^@/]*@#\1:***@#' <<<"$1"; }

# ---------------------------------------------------------------- PostgreSQL

ensure_pg_client() {
	if ! command -v psql >/dev/null 2>&1 || ! command -v pg_isready >/dev/null 2>&1; then
		apt_install postgresql-client
	fi
}

pg_ok() {
	PGCONNECT_TIMEOUT=5 psql "$1" -X -w -Atqc 'select 1' >/dev/null 2>&1
}

# pg_cluster_version prints the newest PostgreSQL major version with a "main" cluster
# under /etc/postgresql, or nothing.
pg_cluster_version() {
	local d
	[[ -d /etc/postgresql ]] || return 0
	for d in /etc/postgresql/*/main; do
		if [[ -f $d/postgresql.conf ]]; then basename "$(dirname "$d")"; fi
	done | sort -V | tail -n 1
}

# pg_server_version prints the newest installed server version, or nothing.
pg_server_version() {
	local b
	for b in /usr/lib/postgresql/*/bin/postgres; do
		if [[ -x $b ]]; then basename "$(dirname "$(dirname "$b")")"; fi
	done | sort -V | tail -n 1
}

# pg_trust_loopback makes the cluster trust TCP connections from loopback, so
# that the passwordless default URL works on a freshly installed cluster.
pg_trust_loopback() {
	local ver=$1 hba err
	if err=$(PGCONNECT_TIMEOUT=5 psql -X -w -h 127.0.0.1 -p 5432 -U postgres -d postgres -Atqc 'select 1' 2>&1 >/dev/null); then
		return 0
	fi
	if ! grep -qiE 'authentication failed|no password supplied|password' <<<"$err"; then
		return 0 # not an authentication problem; reported by the caller
	fi
	hba=/etc/postgresql/$ver/main/pg_hba.conf
	[[ -f $hba ]] || die "PostgreSQL $ver rejects postgres@127.0.0.1 and $hba does not exist"
	if as_root grep -qE '^[[:space:]]*host[[:space:]]+all[[:space:]]+all[[:space:]]+127\.0\.0\.1/32[[:space:]]+trust' "$hba"; then
		return 0 # already trusted; something else is wrong, reported by the caller
	fi
	log "PostgreSQL $ver asks for a password on 127.0.0.1; adding loopback trust lines at the top of $hba"
	local tmp
	tmp=$(mktemp)
	{
		printf '# Added by lazymigrate scripts/services.sh: trust loopback for tests.\n'
		printf 'host all all 127.0.0.1/32 trust\n'
		printf 'host all all ::1/128 trust\n'
		as_root cat "$hba"
	} >"$tmp"
	# cat into the file keeps its owner and mode.
	# shellcheck disable=SC2016 # $1 and $2 are for sh, not this shell
	as_root sh -c 'cat "$1" >"$2"' _ "$tmp" "$hba" || {
		rm -f "$tmp"
		die "could not write $hba"
	}
	rm -f "$tmp"
	as_root pg_ctlcluster --skip-systemctl-redirect "$ver" main reload >&2 ||
		die "pg_ctlcluster $ver main reload failed"
}

ensure_postgres() {
	ensure_pg_client

	if [[ -n ${LM_PG_URL:-} ]]; then
		if pg_ok "$LM_PG_URL"; then
			PG_URL=$LM_PG_URL
			log "PostgreSQL: using LM_PG_URL ($(redact "$LM_PG_URL"))"
			return
		fi
		log "warning: LM_PG_URL ($(redact "$LM_PG_URL")) does not answer; falling back to $DEFAULT_PG_URL"
	fi
	if pg_ok "$DEFAULT_PG_URL"; then
		PG_URL=$DEFAULT_PG_URL
		log "PostgreSQL: already up at $DEFAULT_PG_URL"
		return
	fi

	local ver started=0
	ver=$(pg_cluster_version)
	if [[ -z $ver ]]; then
		if [[ -z $(pg_server_version) ]]; then
			apt_install postgresql postgresql-client
		fi
		started=1
		ver=$(pg_cluster_version)
		if [[ -z $ver ]]; then
			# Server installed but no cluster (e.g. create_main_cluster = false).
			ver=$(pg_server_version)
			[[ -n $ver ]] || die "PostgreSQL server not found after installing it"
			command -v pg_createcluster >/dev/null 2>&1 ||
				die "PostgreSQL $ver has no cluster and pg_createcluster is missing"
			log "creating PostgreSQL cluster $ver/main"
			as_root pg_createcluster "$ver" main >&2 || die "pg_createcluster $ver main failed"
		fi
	fi
	command -v pg_ctlcluster >/dev/null 2>&1 ||
		die "PostgreSQL $ver is installed but pg_ctlcluster is missing (package postgresql-common)"

	# pg_ctlcluster status exits 0 when the cluster runs, 3 when it is down.
	if as_root pg_ctlcluster --skip-systemctl-redirect "$ver" main status >/dev/null 2>&1; then
		log "PostgreSQL cluster $ver/main is running but $DEFAULT_PG_URL does not answer yet"
	else
		log "starting PostgreSQL cluster $ver/main"
		as_root pg_ctlcluster --skip-systemctl-redirect "$ver" main start >&2 ||
			die "pg_ctlcluster $ver main start failed (see /var/log/postgresql/postgresql-$ver-main.log)"
		started=1
	fi

	wait_until "PostgreSQL" pg_isready -q -h 127.0.0.1 -p 5432 -t 2 ||
		die "PostgreSQL cluster $ver/main did not accept connections on 127.0.0.1:5432 within ${WAIT_SECONDS}s (see /var/log/postgresql/postgresql-$ver-main.log)"

	if [[ $started -eq 1 ]]; then
		pg_trust_loopback "$ver"
	fi

	local err
	if ! err=$(PGCONNECT_TIMEOUT=5 psql "$DEFAULT_PG_URL" -X -w -Atqc 'select 1' 2>&1 >/dev/null); then
		die "PostgreSQL is up but $DEFAULT_PG_URL fails: $(head -n 1 <<<"$err")"
	fi
	PG_URL=$DEFAULT_PG_URL
	log "PostgreSQL: up at $DEFAULT_PG_URL"
}

# --------------------------------------------------------------------- Redis

ensure_redis_cli() {
	command -v redis-cli >/dev/null 2>&1 || apt_install redis-tools
}

# redis_ok reports whether addr (host:port, [v6]:port, host, or redis:// URL)
# answers PING.
redis_ok() {
	local addr=$1 host port out
	if [[ $addr == redis://* || $addr == rediss://* ]]; then
		out=$(timeout 5 redis-cli --no-auth-warning -u "$addr" ping 2>/dev/null) || return 1
	else
		if [[ $addr == \[*\]:* ]]; then # [::1]:6379
			host=${addr%%]*}
			host=${host#[}
			port=${addr##*]:}
		elif [[ $addr == *:*:* ]]; then # bare IPv6 address
			host=$addr
			port=$DEFAULT_REDIS_PORT
		elif [[ $addr == *:* ]]; then
			host=${addr%:*}
			port=${addr##*:}
		else
			host=$addr
			port=$DEFAULT_REDIS_PORT
		fi
		out=$(timeout 5 redis-cli -h "$host" -p "$port" ping 2>/dev/null) || return 1
	fi
	[[ $out == PONG ]]
}

ensure_redis() {
	ensure_redis_cli
	local default=$DEFAULT_REDIS_HOST:$DEFAULT_REDIS_PORT

	if [[ -n ${LM_REDIS_ADDR:-} ]]; then
		if redis_ok "$LM_REDIS_ADDR"; then
			REDIS_ADDR=$LM_REDIS_ADDR
			log "Redis: using LM_REDIS_ADDR ($(redact "$LM_REDIS_ADDR"))"
			return
		fi
		log "warning: LM_REDIS_ADDR ($(redact "$LM_REDIS_ADDR")) does not answer PING; falling back to $default"
	fi
	if redis_ok "$default"; then
		REDIS_ADDR=$default
		log "Redis: already up at $default"
		return
	fi

	if ! command -v redis-server >/dev/null 2>&1; then
		apt_install redis-server redis-tools
		# The package may have started its own server.
		if redis_ok "$default"; then
			REDIS_ADDR=$default
			log "Redis: up at $default"
			return
		fi
	fi

	local dir=/var/lib/redis logdir=/var/log/redis logfile
	# redis-server runs as the caller, so the caller must own these.
	mkdir -p "$dir" 2>/dev/null || true
	mkdir -p "$logdir" 2>/dev/null || true
	[[ -d $dir && -w $dir ]] || dir=${TMPDIR:-/tmp}
	logfile=$logdir/lazymigrate.log
	if ! { [[ -d $logdir ]] && touch "$logfile" 2>/dev/null; }; then
		logfile=${TMPDIR:-/tmp}/lazymigrate-redis.log
	fi

	log "starting redis-server on $default (log: $logfile)"
	redis-server --daemonize yes --bind 127.0.0.1 -::1 --port "$DEFAULT_REDIS_PORT" \
		--save "" --appendonly no --dir "$dir" --logfile "$logfile" >&2 ||
		die "redis-server failed to start (see $logfile)"

	wait_until "Redis" redis_ok "$default" ||
		die "Redis did not answer PING on $default within ${WAIT_SECONDS}s (see $logfile)"
	REDIS_ADDR=$default
}

# ------------------------------------------------------------ Redis Cluster

# split_addr prints the host and the port of host:port or [v6]:port, one a
# line.
split_addr() {
	local addr=$1
	if [[ $addr == \[*\]:* ]]; then
		local host=${addr%%]*}
		printf '%s\n%s\n' "${host#[}" "${addr##*]:}"
	elif [[ $addr == *:* && $addr != *:*:* ]]; then
		printf '%s\n%s\n' "${addr%:*}" "${addr##*:}"
	else
		return 1
	fi
}

# cluster_info prints CLUSTER INFO of the node at addr (host:port), and fails
# unless addr is a cluster-enabled Redis.
cluster_info() {
	local parts out
	mapfile -t parts < <(split_addr "$1") || return 1
	[[ ${#parts[@]} -eq 2 ]] || return 1
	# redis-cli exits 0 on an error reply ("cluster support disabled").
	out=$(timeout 5 redis-cli -h "${parts[0]}" -p "${parts[1]}" cluster info 2>/dev/null) || return 1
	[[ $out == *cluster_state:* ]] || return 1
	printf '%s\n' "$out"
}

# cluster_field prints one field of CLUSTER INFO output (read from stdin).
cluster_field() { tr -d '\r' | sed -n "s/^$1://p"; }

# cluster_node_ok reports whether the node at addr says cluster_state:ok.
cluster_node_ok() {
	local info
	info=$(cluster_info "$1") || return 1
	[[ $(cluster_field cluster_state <<<"$info") == ok ]]
}

# cluster_ok reports whether every node of a comma-separated list says
# cluster_state:ok.
cluster_ok() {
	local addr addrs
	IFS=, read -ra addrs <<<"$1"
	[[ ${#addrs[@]} -gt 0 ]] || return 1
	for addr in "${addrs[@]}"; do
		addr=${addr//[[:space:]]/}
		[[ -n $addr ]] || continue
		cluster_node_ok "$addr" || return 1
	done
}

# cluster_formed reports whether every local node knows all the local nodes
# and the cluster has assigned all 16384 slots among them: a cluster that is
# merely waiting (e.g. for a restarted node to be readmitted), not one to
# create.
cluster_formed() {
	local port info n=${#CLUSTER_PORTS[@]}
	for port in "${CLUSTER_PORTS[@]}"; do
		info=$(cluster_info "$CLUSTER_HOST:$port") || return 1
		# Not cluster_size: a restarted node counts only the masters it
		# has reached again.
		[[ $(cluster_field cluster_known_nodes <<<"$info") == "$n" &&
			$(cluster_field cluster_slots_assigned <<<"$info") == 16384 ]] || return 1
	done
}

# cluster_blank reports whether every local node knows only itself and holds
# no slots: nodes that `redis-cli --cluster create` accepts.
cluster_blank() {
	local port info
	for port in "${CLUSTER_PORTS[@]}"; do
		info=$(cluster_info "$CLUSTER_HOST:$port") || return 1
		[[ $(cluster_field cluster_known_nodes <<<"$info") == 1 &&
			$(cluster_field cluster_slots_assigned <<<"$info") == 0 ]] || return 1
	done
}

# cluster_nodes_up reports whether every local node answers PING.
cluster_nodes_up() {
	local port
	for port in "${CLUSTER_PORTS[@]}"; do
		redis_ok "$CLUSTER_HOST:$port" || return 1
	done
}

# start_cluster_node starts the cluster node on port unless something already
# answers there, which must then be a cluster-enabled Redis.
start_cluster_node() {
	local port=$1 dir=$CLUSTER_DIR/$1
	if redis_ok "$CLUSTER_HOST:$port"; then
		cluster_info "$CLUSTER_HOST:$port" >/dev/null ||
			die "$CLUSTER_HOST:$port answers PING but is not a Redis Cluster node (free the port or set LM_REDIS_CLUSTER_ADDRS)"
		return 0
	fi
	mkdir -p "$dir" || die "cannot create $dir"
	log "starting Redis Cluster node on $CLUSTER_HOST:$port (log: $dir/$port.log)"
	# The daemon must not inherit the lock's descriptor: it would hold the
	# lock for as long as it runs.
	redis-server --cluster-enabled yes --cluster-config-file "$dir/nodes-$port.conf" \
		--cluster-node-timeout "$CLUSTER_NODE_TIMEOUT_MS" \
		--port "$port" --bind "$CLUSTER_HOST" --save "" --appendonly no \
		--daemonize yes --dir "$dir" --logfile "$dir/$port.log" >&2 {CLUSTER_LOCK_FD}>&- ||
		die "redis-server failed to start on port $port (see $dir/$port.log)"
}

# start_cluster_nodes starts the nodes that are down and waits for all of
# them to answer PING.
start_cluster_nodes() {
	local port
	for port in "${CLUSTER_PORTS[@]}"; do
		start_cluster_node "$port"
	done
	wait_until "every Redis Cluster node" cluster_nodes_up && return
	for port in "${CLUSTER_PORTS[@]}"; do
		if ! redis_ok "$CLUSTER_HOST:$port"; then
			die "Redis Cluster node $CLUSTER_HOST:$port did not answer PING within ${WAIT_SECONDS}s; its log ends: $(tail -n 1 "$CLUSTER_DIR/$port/$port.log" 2>/dev/null)"
		fi
	done
	die "Redis Cluster nodes did not all answer PING within ${WAIT_SECONDS}s (see $CLUSTER_DIR/*/*.log)"
}

# wipe_cluster shuts the local cluster nodes down and deletes their data and
# cluster config files.
wipe_cluster() {
	local port
	for port in "${CLUSTER_PORTS[@]}"; do
		if cluster_info "$CLUSTER_HOST:$port" >/dev/null; then
			timeout 5 redis-cli -h "$CLUSTER_HOST" -p "$port" shutdown nosave >/dev/null 2>&1 || true
		fi
	done
	local deadline=$((SECONDS + WAIT_SECONDS))
	for port in "${CLUSTER_PORTS[@]}"; do
		while redis_ok "$CLUSTER_HOST:$port"; do
			((SECONDS < deadline)) ||
				die "Redis Cluster node on $CLUSTER_HOST:$port did not shut down within ${WAIT_SECONDS}s"
			sleep 0.2
		done
	done
	for port in "${CLUSTER_PORTS[@]}"; do
		rm -rf "${CLUSTER_DIR:?}/$port"
	done
}

# create_cluster assigns the slots of the blank local nodes.
create_cluster() {
	local port err nodes=()
	for port in "${CLUSTER_PORTS[@]}"; do
		nodes+=("$CLUSTER_HOST:$port")
	done
	log "creating Redis Cluster ${nodes[*]}"
	if ! err=$(timeout "$WAIT_SECONDS" redis-cli --cluster create "${nodes[@]}" \
		--cluster-replicas 0 --cluster-yes 2>&1 >/dev/null </dev/null); then
		die "redis-cli --cluster create ${nodes[*]} failed: $(grep -m 1 -E 'ERR|\[ERR\]|rror' <<<"$err" || head -n 1 <<<"$err")"
	fi
}

ensure_redis_cluster() {
	ensure_redis_cli
	local port default=''
	for port in "${CLUSTER_PORTS[@]}"; do
		default+=${default:+,}$CLUSTER_HOST:$port
	done

	if [[ -n ${LM_REDIS_CLUSTER_ADDRS:-} ]]; then
		if cluster_ok "$LM_REDIS_CLUSTER_ADDRS"; then
			REDIS_CLUSTER_ADDRS=$LM_REDIS_CLUSTER_ADDRS
			log "Redis Cluster: using LM_REDIS_CLUSTER_ADDRS ($LM_REDIS_CLUSTER_ADDRS)"
			return
		fi
		log "warning: LM_REDIS_CLUSTER_ADDRS ($LM_REDIS_CLUSTER_ADDRS) does not all report cluster_state:ok; falling back to $default"
	fi
	if cluster_ok "$default"; then
		REDIS_CLUSTER_ADDRS=$default
		log "Redis Cluster: already up at $default"
		return
	fi

	command -v redis-server >/dev/null 2>&1 || apt_install redis-server redis-tools
	mkdir -p "$CLUSTER_DIR" || die "cannot create $CLUSTER_DIR"
	# Two runs at once (parallel `make test`) must not both create the
	# cluster: the second waits here, then finds it up.
	exec {CLUSTER_LOCK_FD}>"$CLUSTER_DIR/lock"
	if command -v flock >/dev/null 2>&1; then
		flock -w $((4 * WAIT_SECONDS)) "$CLUSTER_LOCK_FD" ||
			die "another scripts/services.sh kept $CLUSTER_DIR/lock for $((4 * WAIT_SECONDS))s"
	fi
	if cluster_ok "$default"; then
		REDIS_CLUSTER_ADDRS=$default
		log "Redis Cluster: up at $default"
		exec {CLUSTER_LOCK_FD}>&-
		return
	fi

	start_cluster_nodes
	if cluster_formed; then
		# Restarted nodes rejoin from their nodes-<port>.conf.
		log "Redis Cluster nodes know each other; waiting for cluster_state:ok"
		if ! wait_until "Redis Cluster" cluster_ok "$default"; then
			log "Redis Cluster did not reach cluster_state:ok within ${WAIT_SECONDS}s; recreating it"
			wipe_cluster
			start_cluster_nodes
		fi
	elif ! cluster_blank; then
		log "Redis Cluster nodes have a stale or partial cluster config; recreating the cluster"
		wipe_cluster
		start_cluster_nodes
	fi
	if ! cluster_ok "$default"; then
		if cluster_blank; then
			create_cluster
		fi
		wait_until "Redis Cluster" cluster_ok "$default" ||
			die "Redis Cluster $default did not reach cluster_state:ok within ${WAIT_SECONDS}s (see $CLUSTER_DIR/*/*.log)"
	fi
	exec {CLUSTER_LOCK_FD}>&-
	REDIS_CLUSTER_ADDRS=$default
}

# ensure_chromium makes a headless browser available for the status page's
# rendering test (examples/accounts), and says where it is.
ensure_chromium() {
	CHROMIUM=$(command -v chromium || command -v chromium-browser || true)
	if [[ -z $CHROMIUM ]]; then
		apt_install chromium
		CHROMIUM=$(command -v chromium) || die "chromium installed but not on PATH"
	fi
}

main() {
	PG_URL='' REDIS_ADDR='' REDIS_CLUSTER_ADDRS='' CLUSTER_LOCK_FD='' CHROMIUM=''
	ensure_postgres
	ensure_redis
	ensure_redis_cluster
	if [[ ${LM_SKIP_CHROMIUM:-} != 1 ]]; then
		ensure_chromium
		printf 'export LM_CHROMIUM=%s\n' "$(shq "$CHROMIUM")"
	fi
	printf 'export LM_PG_URL=%s\n' "$(shq "$PG_URL")"
	printf 'export LM_REDIS_ADDR=%s\n' "$(shq "$REDIS_ADDR")"
	printf 'export LM_REDIS_CLUSTER_ADDRS=%s\n' "$(shq "$REDIS_CLUSTER_ADDRS")"
}

main "$@"
