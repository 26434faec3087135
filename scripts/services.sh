#!/usr/bin/env bash
# scripts/services.sh makes PostgreSQL and Redis available for lazymigrate's
# tests and prints, as its only stdout, the shell lines that point at them:
#
#   eval "$(scripts/services.sh)"    # sets LM_PG_URL and LM_REDIS_ADDR
#
# It is idempotent: when both servers already answer it only prints. Otherwise
# it starts (and if need be installs, from Debian's packages) a local
# PostgreSQL cluster and a local Redis. Progress goes to stderr.
#
# Inputs (all optional):
#   LM_PG_URL      a Postgres admin URL to use if it answers
#   LM_REDIS_ADDR  a Redis host:port or redis:// URL to use if it answers
set -euo pipefail

readonly DEFAULT_PG_URL='postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable'
readonly DEFAULT_REDIS_HOST=127.0.0.1
readonly DEFAULT_REDIS_PORT=6379
readonly WAIT_SECONDS=30

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

main() {
	PG_URL='' REDIS_ADDR=''
	ensure_postgres
	ensure_redis
	printf 'export LM_PG_URL=%s\n' "$(shq "$PG_URL")"
	printf 'export LM_REDIS_ADDR=%s\n' "$(shq "$REDIS_ADDR")"
}

main "$@"
