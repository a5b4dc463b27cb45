// The Node globals a program uses (Debian ships no @types/node).
declare var process: any;
declare var Buffer: any;
declare var module: any;
declare var __dirname: string;
declare function require(name: string): any;
