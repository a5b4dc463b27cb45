program smoke;
begin
  writeln('execbox smoke ok');
  writeln({$I %FPCVERSION%});
end.
