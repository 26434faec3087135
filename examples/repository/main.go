// Command repository shows lazy.Repo dropped into existing repository code.
// store.go is the application as it was before the migration: an
// AccountStore interface, its plain pgx implementation, and code that uses
// it. migrating.go is the whole change, under 30 lines: the same interface
// backed by lazy.Repo. This file runs the application against OLD and NEW.
//
// It needs the accounts table in OLD and NEW, which the example service
// creates and fills:
//
//	export LM_OLD_DSN=... LM_NEW_DSN=... LM_REDIS_ADDR=...
//	go run ./examples/accounts seed -create-databases
//	go run ./examples/repository
//
// It reads account 1, renames account 2 and deletes account 3 through the
// store, and shows where each ended up. The promotions its reads schedule
// wait in the asynq queue for a worker: `go run ./examples/accounts worker`.
package main

import (
	"cmp"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/hibiken/asynq"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/lazymigrate/lazymigrate/internal/connect"
	"github.com/lazymigrate/lazymigrate/promote"
	"github.com/lazymigrate/lazymigrate/tracker"
)

func main() {
	var c config
	flag.StringVar(&c.oldDSN, "old-dsn", "", "OLD database `DSN` (default $"+connect.EnvOldDSN+")")
	flag.StringVar(&c.newDSN, "new-dsn", "", "NEW database `DSN` (default $"+connect.EnvNewDSN+")")
	flag.StringVar(&c.redis, "redis", "", "Redis `address` (default $"+connect.EnvRedis+")")
	flag.StringVar(&c.prefix, "prefix", "lazymigrate", "Redis key `prefix` of the tracker")
	flag.StringVar(&c.queue, "queue", "lazymigrate", "asynq `queue` of promotion tasks")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, c, os.Stdout)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "repository:", strings.Join(strings.Fields(err.Error()), " "))
		os.Exit(1)
	}
}

type config struct {
	oldDSN, newDSN, redis string
	prefix, queue         string
}

// run builds the migration's plumbing once for the process, as an
// application does at start-up, then the store, and uses it.
func run(ctx context.Context, c config, out io.Writer) error {
	oldDB, err := connect.Postgres(ctx, "OLD", cmp.Or(c.oldDSN, os.Getenv(connect.EnvOldDSN)), nil)
	if err != nil {
		return err
	}
	defer oldDB.Close()
	newDB, err := connect.Postgres(ctx, "NEW", cmp.Or(c.newDSN, os.Getenv(connect.EnvNewDSN)), nil)
	if err != nil {
		return err
	}
	defer newDB.Close()
	rdb, err := connect.Redis(ctx, cmp.Or(c.redis, os.Getenv(connect.EnvRedis)))
	if err != nil {
		return err
	}
	defer rdb.Close()

	if err := promote.Setup(ctx, newDB); err != nil { // lazymigrate's schema in NEW; idempotent
		return err
	}
	tr, err := tracker.New(rdb, "accounts", &tracker.Config{Prefix: c.prefix})
	if err != nil {
		return err
	}
	enq, err := promote.NewEnqueuer(asynq.NewClientFromRedisClient(rdb), "accounts", &promote.EnqueuerConfig{Queue: c.queue})
	if err != nil {
		return err
	}
	if err := enq.Start(ctx); err != nil {
		return err
	}
	defer enq.Stop() // enqueues what reads scheduled

	store, err := newMigratingStore(ctx, oldDB, newDB, tr, enq) // was: pgStore{newDB}
	if err != nil {
		return fmt.Errorf("%w (has `go run ./examples/accounts seed` run?)", err)
	}
	defer store.Close()
	return useStore(ctx, store, oldDB, newDB, out)
}

// useStore is the application at work: it sees only the AccountStore.
// Where the rows are is looked up behind its back, to show what the store
// did.
func useStore(ctx context.Context, store AccountStore, oldDB, newDB *pgxpool.Pool, out io.Writer) error {
	has := func(db *pgxpool.Pool, id int64, name string) bool {
		var ok bool
		err := db.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM accounts WHERE id = $1 AND (name = $2 OR $2 = ''))`, id, name).Scan(&ok)
		return err == nil && ok
	}

	a, err := store.Get(ctx, 1)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "account 1 is %s <%s>; NEW has it: %v (reads promote it)\n", a.Name, a.Email, has(newDB, 1, ""))

	a, err = rename(ctx, store, 2, "Grace Hopper")
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "account 2 renamed to %s; NEW has it: %v; OLD too: %v\n", a.Name, has(newDB, 2, a.Name), has(oldDB, 2, a.Name))

	if err := store.Delete(ctx, 3); err != nil {
		return err
	}
	_, err = store.Get(ctx, 3)
	if !errors.Is(err, ErrNotFound) {
		return fmt.Errorf("account 3 after its delete: %v, want ErrNotFound", err)
	}
	fmt.Fprintf(out, "account 3 deleted: not found; NEW has it: %v; OLD: %v\n", has(newDB, 3, ""), has(oldDB, 3, ""))
	return nil
}
