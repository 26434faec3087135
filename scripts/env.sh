# shellcheck shell=bash
# Source this file to point an interactive shell at the test services, then run
# `go test` directly:
#
#   . scripts/env.sh && go test -race ./tracker/...
#
# It starts Postgres and Redis if need be (scripts/services.sh) and exports
# LM_PG_URL, LM_REDIS_ADDR and LM_REQUIRE_INTEGRATION=1. It does not change the
# options of the shell that sources it.
if lm_env="$(bash "$(dirname "${BASH_SOURCE[0]}")/services.sh")"; then
	eval "$lm_env"
	export LM_REQUIRE_INTEGRATION=1
	unset lm_env
else
	unset lm_env
	echo "scripts/env.sh: scripts/services.sh failed; environment unchanged" >&2
	return 1
fi
