package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"regexp"
	"slices"
	"strings"
	"time"
)

// The shell completions and the man page are made from the commands' own
// help text, so that neither can drift from it.

func cmdCompletion(ctx context.Context, u *ui, args []string) error {
	if len(args) != 1 || args[0] == "-h" || args[0] == "--help" {
		if len(args) == 1 {
			fmt.Fprint(u.stdout, completionUsage)
			return errHelp
		}
		return usagef("completion: give one of bash, zsh, fish or man")
	}
	flags := commandFlags(ctx, u)
	switch args[0] {
	case "bash":
		return bashCompletion(u.stdout, flags)
	case "zsh":
		return zshCompletion(u.stdout, flags)
	case "fish":
		return fishCompletion(u.stdout, flags)
	case "man":
		return manPage(ctx, u)
	}
	return usagef("completion: %q is not bash, zsh, fish or man%s", args[0], didYouMean(args[0], []string{"bash", "zsh", "fish", "man"}))
}

const completionUsage = `Usage: kpcrypt completion bash|zsh|fish|man

Prints a completion script for the shell, or the man page (roff):
  bash:  source <(kpcrypt completion bash)
  zsh:   kpcrypt completion zsh > "${fpath[1]}/_kpcrypt"
  fish:  kpcrypt completion fish > ~/.config/fish/completions/kpcrypt.fish
  man:   kpcrypt completion man > kpcrypt.1
`

var flagRE = regexp.MustCompile(`(?m)^  (--?[a-z0-9][a-z0-9-]*)`)

// helpText runs a command with -h and returns what it printed.
func helpText(ctx context.Context, u *ui, name string, extra ...string) string {
	var buf bytes.Buffer
	sub := *u
	sub.stdout, sub.stderr = &buf, io.Discard
	if c := findCommand(name); c != nil {
		c.run(ctx, &sub, append(extra, "-h"))
	}
	return buf.String()
}

// commandFlags returns each command's flags, read from its help.
func commandFlags(ctx context.Context, u *ui) map[string][]string {
	out := map[string][]string{}
	for _, c := range allCommands() {
		if c.name == "completion" || c.name == "version" {
			continue
		}
		args := []string{}
		if c.name == "key" {
			args = []string{"create"} // the key subcommands share their common flags
		}
		for _, m := range flagRE.FindAllStringSubmatch(helpText(ctx, u, c.name, args...), -1) {
			if !slices.Contains(out[c.name], m[1]) {
				out[c.name] = append(out[c.name], m[1])
			}
		}
	}
	return out
}

// names are the words completed first: the commands and "help".
func names() []string {
	var ns []string
	for _, c := range allCommands() {
		ns = append(ns, c.name)
	}
	return append(ns, "help")
}

func bashCompletion(w io.Writer, flags map[string][]string) error {
	fmt.Fprintf(w, "# bash completion for kpcrypt, made by \"kpcrypt completion bash\"\n")
	fmt.Fprintf(w, "_kpcrypt() {\n\tlocal cur=${COMP_WORDS[COMP_CWORD]}\n\tif [ \"$COMP_CWORD\" -eq 1 ]; then\n")
	fmt.Fprintf(w, "\t\tCOMPREPLY=($(compgen -W %q -- \"$cur\"))\n\t\treturn\n\tfi\n", strings.Join(names(), " "))
	fmt.Fprintf(w, "\tcase ${COMP_WORDS[1]} in\n")
	for _, c := range allCommands() {
		if fl := flags[c.name]; len(fl) > 0 {
			fmt.Fprintf(w, "\t%s) COMPREPLY=($(compgen -W %q -- \"$cur\")) ;;\n", c.name, strings.Join(fl, " "))
		}
	}
	fmt.Fprintf(w, "\tesac\n\t[ ${#COMPREPLY[@]} -eq 0 ] && COMPREPLY=($(compgen -f -- \"$cur\"))\n}\ncomplete -o default -F _kpcrypt kpcrypt\n")
	return nil
}

func zshCompletion(w io.Writer, flags map[string][]string) error {
	fmt.Fprintf(w, "#compdef kpcrypt\n# zsh completion for kpcrypt, made by \"kpcrypt completion zsh\"\n_kpcrypt() {\n")
	fmt.Fprintf(w, "\tif (( CURRENT == 2 )); then\n\t\tcompadd -- %s\n\t\treturn\n\tfi\n\tcase $words[2] in\n", strings.Join(names(), " "))
	for _, c := range allCommands() {
		if fl := flags[c.name]; len(fl) > 0 {
			fmt.Fprintf(w, "\t%s) compadd -- %s; _files ;;\n", c.name, strings.Join(fl, " "))
		}
	}
	fmt.Fprintf(w, "\t*) _files ;;\n\tesac\n}\ncompdef _kpcrypt kpcrypt\n")
	return nil
}

func fishCompletion(w io.Writer, flags map[string][]string) error {
	fmt.Fprintf(w, "# fish completion for kpcrypt, made by \"kpcrypt completion fish\"\n")
	fmt.Fprintf(w, "complete -c kpcrypt -n __fish_use_subcommand -f -a %q\n", strings.Join(names(), " "))
	for _, c := range allCommands() {
		for _, f := range flags[c.name] {
			if strings.HasPrefix(f, "--") {
				fmt.Fprintf(w, "complete -c kpcrypt -n '__fish_seen_subcommand_from %s' -l %s\n", c.name, strings.TrimPrefix(f, "--"))
			} else {
				fmt.Fprintf(w, "complete -c kpcrypt -n '__fish_seen_subcommand_from %s' -s %s\n", c.name, strings.TrimPrefix(f, "-"))
			}
		}
	}
	return nil
}

// manPage writes kpcrypt(1) in roff, from the top-level usage and each
// command's help.
func manPage(ctx context.Context, u *ui) error {
	w := u.stdout
	esc := func(s string) string {
		s = strings.ReplaceAll(s, `\`, `\e`)
		var out []string
		for _, l := range strings.Split(s, "\n") {
			if strings.HasPrefix(l, ".") || strings.HasPrefix(l, "'") {
				l = `\&` + l
			}
			out = append(out, l)
		}
		return strings.Join(out, "\n")
	}
	fmt.Fprintf(w, ".TH KPCRYPT 1 %q \"kpcrypt %s\"\n", time.Now().UTC().Format("2006-01-02"), version())
	fmt.Fprintf(w, ".SH NAME\nkpcrypt \\- envelope encryption of files under keys in a KMS, an HSM or a local key file\n")
	fmt.Fprintf(w, ".SH SYNOPSIS\n.nf\n%s\n.fi\n", esc(usage))
	fmt.Fprintf(w, ".SH COMMANDS\n")
	for _, c := range allCommands() {
		if c.name == "completion" {
			continue
		}
		fmt.Fprintf(w, ".SS %s\n.nf\n%s\n.fi\n", c.name, esc(strings.TrimRight(helpText(ctx, u, c.name), "\n")))
	}
	fmt.Fprintf(w, ".SH EXIT STATUS\n0 on success, 1 on failure, 2 on a usage error, 130 when interrupted; scan and inspect \\-\\-current also 3 when something could not be checked.\n")
	fmt.Fprintf(w, ".SH SEE ALSO\nREADME.md and FORMAT.md in the kpcrypt sources.\n")
	return nil
}
