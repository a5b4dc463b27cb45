puts "execbox smoke ok"
puts RUBY_VERSION
