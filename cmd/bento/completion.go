package main

import (
	"bufio"
	"fmt"
	"io"
	"sort"
	"strings"
)

// completion prints a shell completion script for bento. The commands
// and flags come from bento's own usage texts, read when the script is
// made, so the completion cannot drift from the commands.
func (c *cli) completion(args []string) int {
	if len(args) != 1 || args[0] == "--help" || args[0] == "-h" {
		if len(args) == 1 {
			fmt.Fprint(c.stdout, completionUsage)
			return exitOK
		}
		return c.usageErr("completion takes one shell: bash, zsh or fish")
	}
	spec := completionSpec()
	switch args[0] {
	case "bash":
		writeBash(c.stdout, spec, false)
	case "zsh":
		writeBash(c.stdout, spec, true)
	case "fish":
		writeFish(c.stdout, spec)
	default:
		return c.usageErr("completion: no completion for %q (bash, zsh or fish)", args[0])
	}
	return exitOK
}

const completionUsage = `usage: bento completion bash|zsh|fish

Prints a completion script for the shell. For example:
  bash:  bento completion bash > /etc/bash_completion.d/bento   (or: source <(bento completion bash))
  zsh:   bento completion zsh > "${fpath[1]}/_bento"              (or: source <(bento completion zsh))
  fish:  bento completion fish > ~/.config/fish/completions/bento.fish
`

// compSpec is what completes: the commands with their flags, the global
// flags, and the subcommands of dust and shard.
type compSpec struct {
	commands []string
	flags    map[string][]string // by command, "--name"
	global   []string
	sub      map[string][]string // by command: dust, shard
}

func completionSpec() compSpec {
	s := compSpec{flags: map[string][]string{}, sub: map[string][]string{}}
	var top strings.Builder
	run([]string{"--help"}, strings.NewReader(""), &top, io.Discard)
	seen := map[string]bool{}
	global := false
	sc := bufio.NewScanner(strings.NewReader(top.String()))
	for sc.Scan() {
		l := sc.Text()
		if strings.HasPrefix(l, "Global option") {
			global = true
			continue
		}
		if rest, ok := strings.CutPrefix(l, "  bento "); ok {
			if f := strings.Fields(rest); len(f) > 0 && !seen[f[0]] {
				seen[f[0]] = true
				s.commands = append(s.commands, f[0])
			}
			continue
		}
		if global {
			if f := strings.Fields(l); len(f) > 0 && strings.HasPrefix(f[0], "--") {
				s.global = append(s.global, f[0])
			}
		}
	}
	for _, cmd := range s.commands {
		var help strings.Builder
		run([]string{cmd, "--help"}, strings.NewReader(""), &help, &help)
		sc := bufio.NewScanner(strings.NewReader(help.String()))
		for sc.Scan() {
			l := sc.Text()
			if cmd == "dust" || cmd == "shard" {
				if rest, ok := strings.CutPrefix(strings.TrimSpace(l), "bento "+cmd+" "); ok {
					if f := strings.Fields(rest); len(f) > 0 {
						s.sub[cmd] = append(s.sub[cmd], f[0])
					}
				}
			}
			// A flag's line in the defaults: "  -name value" or "  -i\t...".
			if strings.HasPrefix(l, "  -") {
				name := strings.Fields(strings.TrimPrefix(l, "  -"))[0]
				if len(name) == 1 {
					s.flags[cmd] = append(s.flags[cmd], "-"+name)
				} else {
					s.flags[cmd] = append(s.flags[cmd], "--"+name)
				}
			}
		}
		sort.Strings(s.flags[cmd])
	}
	return s
}

func writeBash(w io.Writer, s compSpec, zsh bool) {
	fmt.Fprintln(w, "# bento completion; made by `bento completion`.")
	if zsh {
		fmt.Fprintln(w, "autoload -U +X bashcompinit && bashcompinit")
	}
	fmt.Fprintln(w, `_bento() {
	local cur=${COMP_WORDS[COMP_CWORD]} cmd="" i w
	for ((i = 1; i < COMP_CWORD; i++)); do
		w=${COMP_WORDS[i]}
		case $w in
		--tor-socks|--tor-retry|--pin) ((i++)) ;;
		-*) ;;
		*) cmd=$w; break ;;
		esac
	done
	case $cmd in`)
	fmt.Fprintf(w, "\t\"\") COMPREPLY=($(compgen -W %q -- \"$cur\")) ;;\n", strings.Join(append(append([]string{}, s.commands...), s.global...), " "))
	for _, cmd := range s.commands {
		// Flags when the word begins with '-'; else the command's
		// subcommands, if any, and otherwise files (complete -o default).
		fmt.Fprintf(w, "\t%s)\n\t\tif [[ $cur == -* ]]; then COMPREPLY=($(compgen -W %q -- \"$cur\"))", cmd, strings.Join(s.flags[cmd], " "))
		switch cmd {
		case "dust", "shard":
			fmt.Fprintf(w, "; else COMPREPLY=($(compgen -W %q -- \"$cur\"))", strings.Join(s.sub[cmd], " "))
		case "completion":
			fmt.Fprintf(w, "; else COMPREPLY=($(compgen -W \"bash zsh fish\" -- \"$cur\"))")
		}
		fmt.Fprintf(w, "; fi ;;\n")
	}
	fmt.Fprintln(w, `	esac
}
complete -o default -F _bento bento`)
}

func writeFish(w io.Writer, s compSpec) {
	fmt.Fprintln(w, "# bento completion; made by `bento completion`.")
	fmt.Fprintf(w, "complete -c bento -n __fish_use_subcommand -f -a %q\n", strings.Join(s.commands, " "))
	for _, g := range s.global {
		fmt.Fprintf(w, "complete -c bento -n __fish_use_subcommand -l %s -r\n", strings.TrimPrefix(g, "--"))
	}
	for _, cmd := range s.commands {
		for _, f := range s.flags[cmd] {
			if long, ok := strings.CutPrefix(f, "--"); ok {
				fmt.Fprintf(w, "complete -c bento -n '__fish_seen_subcommand_from %s' -l %s\n", cmd, long)
			} else {
				fmt.Fprintf(w, "complete -c bento -n '__fish_seen_subcommand_from %s' -o %s\n", cmd, strings.TrimPrefix(f, "-"))
			}
		}
	}
	for _, cmd := range []string{"dust", "shard"} {
		fmt.Fprintf(w, "complete -c bento -n '__fish_seen_subcommand_from %s' -f -a %q\n", cmd, strings.Join(s.sub[cmd], " "))
	}
	fmt.Fprintln(w, "complete -c bento -n '__fish_seen_subcommand_from completion' -f -a 'bash zsh fish'")
}
