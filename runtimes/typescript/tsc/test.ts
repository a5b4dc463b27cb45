const s: string = "execbox smoke ok";
console.log(s);
