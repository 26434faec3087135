package main

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/lazymigrate/lazymigrate/internal/connect"
	"github.com/lazymigrate/lazymigrate/internal/testenv"
)

// proc is a sweeper running as a process of its own, to be signalled.
type proc struct {
	cmd            *exec.Cmd
	stdout, stderr *testenv.SyncBuffer
}

func (b *bundle) start(t *testing.T, cmd string, extra ...string) *proc {
	t.Helper()
	p := &proc{cmd: exec.Command(binary(t), b.args(cmd, extra...)...), stdout: &testenv.SyncBuffer{}, stderr: &testenv.SyncBuffer{}}
	p.cmd.Stdout, p.cmd.Stderr = p.stdout, p.stderr
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if p.cmd.ProcessState == nil {
			_ = p.cmd.Process.Kill()
			_ = p.cmd.Wait()
		}
	})
	return p
}

// wait waits for the process to end and returns its result; a process
// killed by a signal exits -1.
func (p *proc) wait(t *testing.T) result {
	t.Helper()
	err := p.cmd.Wait()
	var exit *exec.ExitError
	if err != nil && !errors.As(err, &exit) {
		t.Fatal(err)
	}
	return result{p.cmd.ProcessState.ExitCode(), p.stdout.String(), p.stderr.String()}
}

// settledChunks counts the chunks of [1, n] whose every key is settled.
func (b *bundle) settledChunks(t *testing.T, n, chunk int64) (full int64) {
	t.Helper()
	for lo := int64(0); lo <= n; lo += chunk {
		from, to := max(lo, 1), min(lo+chunk, n+1)
		got, err := b.tr.CountRange(context.Background(), from, to)
		if err != nil {
			t.Fatal(err)
		}
		if got == to-from {
			full++
		}
	}
	return full
}

func (b *bundle) settled(t *testing.T) int64 {
	t.Helper()
	n, err := b.tr.Count(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// TestKilledSweepResumes kills a throttled sweep with SIGKILL several times
// as it goes; the last run finishes it, copying only what the killed runs
// did not settle, and verify finds NEW equal to OLD. Rows inserted into NEW,
// rolled back or not, add up to at most the table plus the chunks that were
// in flight at each kill.
func TestKilledSweepResumes(t *testing.T) {
	t.Parallel()
	const (
		n       = 200_000
		chunk   = 2_000
		workers = 2
		kills   = 3
	)
	b := setup(t, n)
	flags := []string{"--chunk", "2000", "--workers", "2", "--progress", "none"}
	for i := range kills {
		before := b.settled(t)
		p := b.start(t, "run", append(flags, "--rate", "100000")...)
		testenv.Eventually(t, time.Minute, "the sweep settles three more chunks", func() bool {
			return b.settled(t) >= before+3*chunk
		})
		if err := p.cmd.Process.Kill(); err != nil {
			t.Fatal(err)
		}
		if r := p.wait(t); r.code != -1 {
			t.Fatalf("kill %d: the sweep was not killed: %v", i+1, r)
		}
	}
	if got := b.settled(t); got >= n {
		t.Fatalf("the sweep finished before the last kill (%d keys settled); slow it down", got)
	}
	full := b.settledChunks(t, n, chunk)
	oldRows := count(t, b.pair.Old, `SELECT count(*) FROM accounts`)
	newRows := count(t, b.pair.New, `SELECT count(*) FROM accounts`)
	t.Logf("after %d kills: %d chunks settled, %d of %d rows in NEW", kills, full, newRows, oldRows)

	r := b.start(t, "run", append(flags, "--json")...).wait(t)
	sum := decode[runOut](t, r)
	if r.code != 0 || sum.Outcome != "done" {
		t.Fatalf("last run: %v", r)
	}
	if sum.ChunksSkipped != full || sum.Rows.Copied != oldRows-newRows {
		t.Errorf("last run skipped %d chunks and copied %d rows; want the %d settled chunks skipped and %d rows copied",
			sum.ChunksSkipped, sum.Rows.Copied, full, oldRows-newRows)
	}
	if r := b.sweeper(t, "verify", "--json"); r.code != 0 || !decode[verifyOut](t, r).Equal {
		t.Errorf("verify: %v", r)
	}

	// Statistics reach pg_stat_user_tables asynchronously: wait until every
	// sweeper session has ended and the inserts of the table are counted.
	rows := count(t, b.pair.New, `SELECT count(*) FROM accounts`)
	var inserted int64
	testenv.Eventually(t, 30*time.Second, "NEW's statistics count every row inserted", func() bool {
		sessions := count(t, b.pair.New, `SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND application_name = $1`, appName)
		inserted = count(t, b.pair.New, `SELECT n_tup_ins FROM pg_stat_user_tables WHERE relid = 'accounts'::regclass`)
		return sessions == 0 && inserted >= rows
	})
	limit := rows + kills*workers*chunk
	t.Logf("%d rows inserted into NEW for %d rows: %d redone", inserted, rows, inserted-rows)
	if inserted > limit {
		t.Errorf("%d rows inserted into NEW, more than its %d rows plus %d kills × %d workers × %d keys (%d): settled chunks were copied again",
			inserted, rows, kills, workers, chunk, limit)
	}
}

// TestInterruptedSweepResumes stops a sweep with SIGINT, then another with
// SIGTERM: each finishes its chunks in flight, prints its summary and exits
// 130, and the next run goes on from there without copying anything twice.
func TestInterruptedSweepResumes(t *testing.T) {
	t.Parallel()
	const (
		n     = 100_000
		chunk = 2_000
	)
	b := setup(t, n)
	flags := []string{"--chunk", "2000", "--rate", "30000", "--progress", "none"}
	var done int64
	for i, sig := range []os.Signal{os.Interrupt, syscall.SIGTERM} {
		before := b.settled(t)
		p := b.start(t, "run", append(flags, "--json")...)
		testenv.Eventually(t, time.Minute, "the sweep settles two more chunks", func() bool {
			return b.settled(t) >= before+2*chunk
		})
		if err := p.cmd.Process.Signal(sig); err != nil {
			t.Fatal(err)
		}
		r := p.wait(t)
		sum := decode[runOut](t, r)
		if r.code != exitInterrupted || sum.Outcome != "interrupted" || sum.ChunksDone >= sum.Chunks {
			t.Fatalf("%v: want exit 130 and an interrupted summary: %v", sig, r)
		}
		if !strings.Contains(r.stderr, "interrupted: finishing the chunks in flight") {
			t.Errorf("%v: no word of the interruption on stderr:\n%s", sig, r.stderr)
		}
		// Every chunk done is settled, and no other: the chunks in flight
		// were finished, none was cut short.
		done += sum.ChunksDone - sum.ChunksSkipped
		if got := b.settledChunks(t, n, chunk); got != done {
			t.Errorf("after interruption %d: %d chunks settled, want the %d done", i+1, got, done)
		}
	}

	// The human summary of an interrupted run.
	p := b.start(t, "run", flags...)
	testenv.Eventually(t, time.Minute, "the sweep goes on", func() bool { return b.settledChunks(t, n, chunk) > done })
	if err := p.cmd.Process.Signal(os.Interrupt); err != nil {
		t.Fatal(err)
	}
	if r := p.wait(t); r.code != exitInterrupted || !strings.Contains(r.stdout, "interrupted after") ||
		!strings.Contains(r.stdout, "run it again to go on") {
		t.Errorf("interrupted run: %v", r)
	}

	full := b.settledChunks(t, n, chunk)
	oldRows := count(t, b.pair.Old, `SELECT count(*) FROM accounts`)
	newRows := count(t, b.pair.New, `SELECT count(*) FROM accounts`)
	r := b.sweeper(t, "run", "--chunk", "2000", "--json", "--quiet")
	sum := decode[runOut](t, r)
	if r.code != 0 || sum.Outcome != "done" {
		t.Fatalf("last run: %v", r)
	}
	if sum.ChunksSkipped != full || sum.Rows.Copied != oldRows-newRows {
		t.Errorf("last run skipped %d chunks and copied %d rows; want the %d settled chunks skipped and %d rows copied",
			sum.ChunksSkipped, sum.Rows.Copied, full, oldRows-newRows)
	}
	if r := b.sweeper(t, "verify", "--json"); r.code != 0 || !decode[verifyOut](t, r).Equal {
		t.Errorf("verify: %v", r)
	}
}

// TestEnvironmentFallback: with no connection flag, the connections come
// from LM_OLD_DSN, LM_NEW_DSN and LM_REDIS_ADDR.
func TestEnvironmentFallback(t *testing.T) {
	t.Parallel()
	b := setup(t, 1_000)
	sweep := func(args ...string) result {
		cmd := exec.Command(binary(t), args...)
		cmd.Env = append(os.Environ(),
			connect.EnvOldDSN+"="+b.pair.Old.URL, connect.EnvNewDSN+"="+b.pair.New.URL, connect.EnvRedis+"="+b.redis)
		var stdout, stderr strings.Builder
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		err := cmd.Run()
		var exit *exec.ExitError
		if err != nil && !errors.As(err, &exit) {
			t.Fatal(err)
		}
		return result{cmd.ProcessState.ExitCode(), stdout.String(), stderr.String()}
	}
	if r := sweep("run", "--table", "accounts", "--prefix", b.prefix, "--quiet"); r.code != 0 || !strings.Contains(r.stdout, "done in") {
		t.Errorf("run: %v", r)
	}
	if r := sweep("verify", "--table", "accounts", "--quiet"); r.code != 0 || !strings.Contains(r.stdout, "NEW matches OLD") {
		t.Errorf("verify: %v", r)
	}
	if r := sweep("status", "--table", "accounts", "--prefix", b.prefix); r.code != 0 || !strings.Contains(r.stdout, "(100.0%)") {
		t.Errorf("status: %v", r)
	}
}
