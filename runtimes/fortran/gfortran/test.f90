program smoke
  use iso_fortran_env, only: compiler_version
  print "(a)", "execbox smoke ok"
  print "(a)", compiler_version()
end program smoke
