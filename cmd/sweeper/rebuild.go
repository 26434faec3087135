package main

import (
	"context"
	"fmt"

	"github.com/lazymigrate/lazymigrate/tracker"
)

const rebuildHelp = `
Rebuilds the tracker's bitmap of a table from NEW, after Redis lost it: it
marks every key NEW holds and every key tombstoned for the table. It only
adds bits, so it is safe while the application and sweepers run.

Keys that are in neither (absent from OLD too, which a sweep had marked
settled) stay unmarked until the next 'sweeper run', which settles them
again without copying anything. --reset first deletes the whole bitmap, to
drop bits NEW does not justify; do that only while nothing else runs.`

func cmdRebuild(ctx context.Context, c *cli, args []string) (int, error) {
	var (
		cs          conns
		tf          tableFlags
		prefix      string
		segmentBits uint
		reset       bool
	)
	c.flags("--table NAME [flags]", rebuildHelp)
	c.newFlag(&cs)
	c.redisFlag(&cs)
	c.tableFlags(&tf, false)
	c.prefixFlag(&prefix)
	c.segmentBitsFlag(&segmentBits)
	c.fs.BoolVar(&reset, "reset", false, "delete the table's bitmap first")
	if err := c.parse(args); err != nil {
		return exitError, err
	}
	if err := tf.check(); err != nil {
		return exitError, err
	}
	if err := checkPrefix(prefix); err != nil {
		return exitError, err
	}
	if err := checkSegmentBits(segmentBits); err != nil {
		return exitError, err
	}
	nw, err := c.openNew(ctx, cs, 0)
	if err != nil {
		return exitError, err
	}
	defer nw.Close()
	rdb, err := c.openRedis(ctx, cs)
	if err != nil {
		return exitError, err
	}
	defer func() { _ = rdb.Close() }()
	if _, err := describe(ctx, nw, "NEW", "table", tf.table, tf.key, false); err != nil {
		return exitError, err
	}
	if err := checkSchema(ctx, nw); err != nil {
		return exitError, err
	}
	if reset {
		// The layout check would refuse a bitmap of other segment bits;
		// after a reset any layout is fine.
		tr, err := tracker.New(rdb, tf.table, &tracker.Config{Prefix: prefix, SegmentBits: segmentBits})
		if err != nil {
			return exitError, err
		}
		if err := tr.Reset(ctx); err != nil {
			return exitError, err
		}
	}
	tr, err := newTracker(ctx, rdb, tf.table, prefix, segmentBits, nil)
	if err != nil {
		return exitError, err
	}
	marked, err := tr.Rebuild(ctx, nw, tf.table, tf.key)
	if err != nil {
		return exitError, err
	}
	total, err := tr.Count(ctx)
	if err != nil {
		return exitError, err
	}
	what := "rebuilt"
	if reset {
		what = "reset and rebuilt"
	}
	fmt.Fprintf(c.stdout, "%s the tracker of %s from NEW: %s keys newly marked, %s settled in all\n",
		what, tf.table, human(marked), human(total))
	return exitOK, nil
}
