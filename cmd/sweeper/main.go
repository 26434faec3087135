package main

import (
	"fmt"
	"os"
)

func main() {
	fmt.Fprintln(os.Stderr, "sweeper: not implemented yet (issue 4)")
	os.Exit(2)
}
