// composecheck loads a compose file as Docker Compose v2 does (compose-go: schema validation,
// interpolation, env files, profiles) and prints the resolved project as JSON, or the error.
//
//	composecheck [-env-file FILE] [-profile NAME]... compose.yaml
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"strings"

	"github.com/compose-spec/compose-go/v2/cli"
)

type list []string

func (l *list) String() string     { return strings.Join(*l, ",") }
func (l *list) Set(v string) error { *l = append(*l, v); return nil }

func main() {
	var envFiles, profiles list
	flag.Var(&envFiles, "env-file", "an env file for interpolation (repeatable; default: .env beside the compose file)")
	flag.Var(&profiles, "profile", "a profile to enable (repeatable)")
	flag.Parse()
	if flag.NArg() != 1 {
		fmt.Fprintln(os.Stderr, "usage: composecheck [-env-file FILE] [-profile NAME]... compose.yaml")
		os.Exit(2)
	}
	opts, err := cli.NewProjectOptions(flag.Args(),
		cli.WithOsEnv, cli.WithEnvFiles(envFiles...), cli.WithDotEnv, cli.WithProfiles(profiles),
		cli.WithResolvedPaths(true), cli.WithConsistency(true))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	project, err := opts.LoadProject(context.Background())
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	out, err := project.MarshalJSON()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	os.Stdout.Write(out)
}
