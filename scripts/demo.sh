#!/usr/bin/env bash
# scripts/demo.sh is `make demo`: a live migration of 200,000 accounts in
# under two minutes, from a fresh clone.
#
#   1. makes Postgres and Redis available (scripts/services.sh);
#   2. creates the demo databases lm_demo_old and lm_demo_new afresh and
#      seeds OLD;
#   3. starts the example service (examples/accounts) and drives a skewed
#      read load at it for 20 s, printing the share of reads NEW serves;
#   4. sweeps the rest with cmd/sweeper, verifies, and prints a summary;
#   5. leaves the service running until Ctrl-C, unless CI=true, where it
#      stops and exits non-zero if any step failed.
#
# Inputs (all optional): DEMO_ADDR (default: the first free port of
# 127.0.0.1:8080-8099), DEMO_ROWS
# (200000), DEMO_SECONDS (20), and the variables scripts/services.sh reads.
set -euo pipefail

# in_use HOST:PORT: something already listens there.
in_use() { (exec 3<>"/dev/tcp/${1%:*}/${1##*:}") 2>/dev/null; }
ADDR=${DEMO_ADDR:-}
if [[ -z $ADDR ]]; then # the first free port from 8080
	for port in $(seq 8080 8099); do
		in_use "127.0.0.1:$port" || { ADDR=127.0.0.1:$port; break; }
	done
	[[ -n $ADDR ]] || { echo "demo: error: ports 8080-8099 are all taken; set DEMO_ADDR" >&2; exit 1; }
fi
readonly ADDR
readonly ROWS=${DEMO_ROWS:-200000}
readonly SECONDS_OF_LOAD=${DEMO_SECONDS:-20}
readonly PREFIX=lmdemo
readonly ROOT=$(cd "$(dirname "$0")/.." && pwd)

step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
die() {
	printf 'demo: error: %s\n' "$*" >&2
	exit 1
}

cd "$ROOT"
started=$SECONDS

step "Postgres and Redis"
eval "$(LM_SKIP_CHROMIUM=1 scripts/services.sh)"

# The demo databases live next to the admin database of LM_PG_URL.
dsn_for() { # dsn_for NAME: LM_PG_URL with its database replaced by NAME
	local url=$LM_PG_URL query=""
	if [[ $url == *\?* ]]; then
		query="?${url#*\?}"
		url=${url%%\?*}
	fi
	printf '%s/%s%s' "${url%/*}" "$1" "$query"
}
export LM_OLD_DSN LM_NEW_DSN
LM_OLD_DSN=$(dsn_for lm_demo_old)
LM_NEW_DSN=$(dsn_for lm_demo_new)
redis_url=$LM_REDIS_ADDR
[[ $redis_url == *://* ]] || redis_url="redis://$redis_url"

step "Building the example service and the sweeper"
bin=$(mktemp -d "${TMPDIR:-/tmp}/lazymigrate-demo.XXXXXX")
service_pid=""
cleanup() {
	if [[ -n $service_pid ]] && kill -0 "$service_pid" 2>/dev/null; then
		kill -INT "$service_pid" 2>/dev/null || true
		wait "$service_pid" 2>/dev/null || true
	fi
	rm -rf "$bin"
}
trap cleanup EXIT
go build -o "$bin/accounts" ./examples/accounts
go build -o "$bin/sweeper" ./cmd/sweeper

step "Fresh demo databases, ${ROWS} accounts in OLD"
if command -v psql >/dev/null 2>&1; then
	for db in lm_demo_old lm_demo_new; do
		PGOPTIONS="-c client_min_messages=warning" psql -X -q -v ON_ERROR_STOP=1 "$LM_PG_URL" \
			-c "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null
	done
else
	echo "(psql not found: reusing the demo databases as they are)"
fi
if command -v redis-cli >/dev/null 2>&1; then
	# The tracker, mode and sweep progress of an earlier demo, and its queue.
	for pattern in "$PREFIX:*" "asynq:{$PREFIX}*"; do
		redis-cli -u "$redis_url" --scan --pattern "$pattern" | xargs -r redis-cli -u "$redis_url" del >/dev/null
	done
	redis-cli -u "$redis_url" srem asynq:queues "$PREFIX" >/dev/null
fi
"$bin/accounts" seed --create-databases --rows "$ROWS"
"$bin/sweeper" init --quiet
"$bin/sweeper" rebuild-tracker --table accounts --prefix "$PREFIX" --reset --quiet

step "Serving on http://$ADDR"
"$bin/accounts" serve --addr "$ADDR" --prefix "$PREFIX" --queue "$PREFIX" 2>"$bin/serve.log" &
service_pid=$!
for _ in $(seq 150); do
	curl -fsS "http://$ADDR/healthz" >/dev/null 2>&1 && break
	kill -0 "$service_pid" 2>/dev/null || die "the service stopped: $(tail -5 "$bin/serve.log")"
	sleep 0.2
done
curl -fsS "http://$ADDR/healthz" >/dev/null || die "the service did not answer on $ADDR"

step "Zipf reads for ${SECONDS_OF_LOAD}s: watch the share served by NEW climb"
"$bin/accounts" load --addr "$ADDR" --rows "$ROWS" --duration "${SECONDS_OF_LOAD}s" --rate 2000 --seed "$RANDOM"

step "Sweeping the cold rest"
# Rate-limited so that the status page shows it running for a few seconds.
"$bin/sweeper" run --table accounts --prefix "$PREFIX" --progress plain --interval 1s --rate 50000

step "Verifying OLD against NEW"
"$bin/sweeper" verify --table accounts

step "Status"
"$bin/sweeper" status --table accounts --prefix "$PREFIX"

cat <<EOF

Done in $((SECONDS - started)) s. The service is still running:
  status page   http://$ADDR/status
  metrics       http://$ADDR/metrics
  an account    curl -i http://$ADDR/accounts/42
EOF

if [[ ${CI:-} == true ]]; then
	exit 0
fi
echo "Press Ctrl-C to stop it."
trap 'echo; echo "stopping"; exit 0' INT TERM
wait "$service_pid"
