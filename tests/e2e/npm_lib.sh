#!/usr/bin/env bash
# Shared by the parity tests that compare with node references (tokenizer, chat template);
# sourced, not run (CTest runs *_test.sh only).
#   npm_install PACKAGE_JSON DIR [npm flags...]
# installs the exact versions PACKAGE_JSON lists into DIR/node_modules unless they are there
# already; exits 77 (skipped) when the npm registry is unreachable, 1 when it answers and the
# install still fails.

npm_installed() {  # npm_installed PACKAGE_JSON DIR: every dependency at its exact version?
  node -e '
    const fs = require("fs"), path = require("path");
    const want = JSON.parse(fs.readFileSync(process.argv[1], "utf8")).dependencies;
    for (const [name, version] of Object.entries(want)) {
      const p = path.join(process.argv[2], "node_modules", name, "package.json");
      if (!fs.existsSync(p) || JSON.parse(fs.readFileSync(p, "utf8")).version !== version) process.exit(1);
    }' "$1" "$2"
}

npm_install() {
  local package_json=$1 dir=$2
  shift 2
  mkdir -p "$dir"
  npm_installed "$package_json" "$dir" && return 0
  cp "$package_json" "$dir/package.json"
  echo "npm install into $dir"
  if ! (cd "$dir" && npm install "$@" --no-audit --no-fund --loglevel=error); then
    if ! npm ping >/dev/null 2>&1; then
      echo "SKIPPED: the npm registry is unreachable (npm ping failed); cannot fetch the references"
      exit 77
    fi
    echo "FAIL: npm install failed although the registry answers"
    exit 1
  fi
}
