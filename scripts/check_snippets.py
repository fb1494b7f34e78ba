#!/usr/bin/env python3
"""Compiles every C++ code block of the README and docs/, so they cannot rot.

    python3 scripts/check_snippets.py --out DIR [--cxx g++] [--nvcc nvcc] [flags...]

Each ```cpp block is one snippet. A snippet with a main() is compiled as a
program; any other becomes a function in a shared translation unit: its
#include lines move to the top of the file, the rest must be valid
declarations (a function definition, a using-declaration) at namespace scope,
so write snippets as whole functions. Snippets that include muon/cuda.hpp go
into a .cu file compiled by nvcc (skipped, with a message, when --nvcc is not
given). Snippets that include muon/torch.hpp go into a unit of their own,
compiled with libtorch's include directories (--torch-isystem DIR, repeated;
skipped, with a message, without them). Extra arguments are passed to the
compilers (include paths, -std).
Exit status: 0 when everything compiled.
"""
import argparse
import pathlib
import re
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent


def snippets():
    files = [ROOT / "README.md"] + sorted((ROOT / "docs").rglob("*.md"))
    for path in files:
        text = path.read_text(encoding="utf-8")
        for m in re.finditer(r"^```cpp\n(.*?)^```", text, re.S | re.M):
            line = text.count("\n", 0, m.start()) + 1
            yield path.relative_to(ROOT), line, m.group(1)


def translation_unit(blocks):
    includes, bodies = [], []
    for where, line, code in blocks:
        body = []
        for row in code.splitlines():
            if row.startswith("#include"):
                if row not in includes:
                    includes.append(row)
            else:
                body.append(row)
        bodies.append(f'// {where}:{line}\n#line {line + 1} "{where}"\n'
                      f"namespace snippet_{len(bodies)} {{\n" + "\n".join(body) + "\n}\n")
    return "\n".join(includes) + "\n\n" + "\n".join(bodies) + "\nint main() {}\n"


def compile_unit(compiler, source, output, flags, syntax_only):
    if syntax_only:
        cmd = [compiler, *flags, "-c" if source.endswith(".cu") else "-fsyntax-only", source]
        if source.endswith(".cu"):
            cmd += ["-o", output + ".o"]
    else:
        cmd = [compiler, *flags, source, "-o", output]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        sys.stderr.write(result.stdout + result.stderr)
        sys.stderr.write(f"FAILED: {' '.join(cmd)}\n")
        return False
    return True


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--cxx", default="c++")
    ap.add_argument("--nvcc")
    ap.add_argument("--torch-isystem", action="append", default=[],
                    help="a libtorch include directory (the muon/torch.hpp snippets need them)")
    ap.add_argument("--only-torch", action="store_true",
                    help="compile the muon/torch.hpp snippets only (the others: a run without libtorch)")
    ap.add_argument("--syntax-only", action="store_true",
                    help="check without generating code (C++: -fsyntax-only; CUDA: -c)")
    args, flags = ap.parse_known_args()
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cpu, cuda, torch, programs = [], [], [], []
    for s in snippets():
        if "muon/torch.hpp" in s[2]:
            torch.append(s)
        elif re.search(r"\bint main\s*\(", s[2]):
            programs.append(s)
        elif "muon/cuda.hpp" in s[2]:
            cuda.append(s)
        else:
            cpu.append(s)
    if args.only_torch:
        cpu, cuda, programs = [], [], []
    ok = True
    units = []
    if cpu:
        units.append(("cpu_snippets.cpp", args.cxx, translation_unit(cpu)))
    for i, s in enumerate(programs):
        units.append((f"program_{i}.cpp", args.cxx, f'#line 1 "{s[0]}:{s[1]}"\n' + s[2]))
    if cuda:
        if args.nvcc:
            units.append(("cuda_snippets.cu", args.nvcc, translation_unit(cuda)))
        else:
            print(f"check_snippets: {len(cuda)} CUDA snippet(s) not compiled (no --nvcc)")
    if torch:
        if args.torch_isystem:
            units.append(("torch_snippets.cpp", args.cxx, translation_unit(torch)))
        else:
            print(f"check_snippets: {len(torch)} libtorch snippet(s) not compiled (no --torch-isystem)")
    for name, compiler, code in units:
        (out / name).write_text(code, encoding="utf-8")
        cuda_unit = name.endswith(".cu")
        if name.startswith("torch"):
            # The compiler's own directories stay out: -isystem /usr/include
            # would break its #include_next chain.
            dirs = dict.fromkeys(str(pathlib.Path(d).resolve()) for d in args.torch_isystem)
            flags_here = flags + [f"-isystem{d}" for d in dirs
                                  if d not in ("/usr/include", "/usr/local/include")]
        else:
            flags_here = flags
        # nvcc takes the include paths; host-only options go through -Xcompiler.
        unit_flags = [f for f in flags_here
                      if not (cuda_unit and (f.startswith("-W") or f in ("-pthread", "-march=native")))]
        if cuda_unit:
            # nvcc wants "-isystem <dir>" as two arguments.
            split = []
            for f in unit_flags:
                split += ["-isystem", f[len("-isystem"):]] if f.startswith("-isystem") and f != "-isystem" else [f]
            unit_flags = ["-std=c++17", *[f for f in split if not f.startswith("-std")]]
            if not args.syntax_only:
                unit_flags.append("-lcublas")
        ok = compile_unit(compiler, str(out / name), str(out / (name + ".bin")), unit_flags,
                          args.syntax_only) and ok
    total = (len(cpu) + len(programs) + (len(cuda) if args.nvcc else 0) +
             (len(torch) if args.torch_isystem else 0))
    print(f"check_snippets: {total} snippet(s) in {len(units)} unit(s): "
          f"{'all compiled' if ok else 'FAILED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
